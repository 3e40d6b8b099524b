"""Plain-Python control logic (no ROS types): observation history, action queue, limits, runner."""
from .action_queue import ActionQueue, QueueStats
from .delivery import IMMEDIATE, Delivery, simulated
from .limits import ActionLimits
from .observation_buffer import Observation, ObservationBuffer
from .runner import ChunkRecord, PolicyRunner, RunnerConfig, cause_key
from .status import RunnerStatus
from .tick_grid import TickGrid
from .transitions import TRANSITIONS, Transition, transition

__all__ = ["IMMEDIATE", "TRANSITIONS", "ActionLimits", "ActionQueue", "ChunkRecord", "Delivery", "Observation",
           "ObservationBuffer", "PolicyRunner", "QueueStats", "RunnerConfig", "RunnerStatus", "TickGrid",
           "Transition", "cause_key", "simulated", "transition"]
