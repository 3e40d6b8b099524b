"""Plain-Python control logic (no ROS types): observation history, action queue, limits, runner."""
from .action_queue import ActionQueue, QueueStats
from .limits import ActionLimits
from .observation_buffer import Observation, ObservationBuffer
from .runner import ChunkRecord, PolicyRunner, RunnerConfig, cause_key
from .status import RunnerStatus
from .tick_grid import TickGrid

__all__ = ["ActionLimits", "ActionQueue", "ChunkRecord", "Observation", "ObservationBuffer", "PolicyRunner",
           "QueueStats", "RunnerConfig", "RunnerStatus", "TickGrid", "cause_key"]
