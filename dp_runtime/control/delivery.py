"""When a computed chunk reaches the queue: at once (a robot), or on a simulated clock (replay, sim).

On a robot the chunk is queued the moment inference returns, stamped with the real time it took.
Offline replay and the closed-loop sim run on a simulated clock: inference is assumed to take
``latency_s`` of that clock (deterministic), and the chunk stays in flight for that long plus an
injected ``delay_s`` (evaluation of transitions under delay) while the queue runs on.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Delivery:
    simulated: bool = False  # the chunk is in flight on a simulated clock until its arrival time
    latency_s: float | None = None  # simulated: the inference time assumed (None: measured)
    delay_s: float = 0.0  # simulated: extra time before the chunk arrives

    def __post_init__(self) -> None:
        if self.delay_s < 0:
            raise ConfigError(f"delivery delay must be >= 0, got {self.delay_s}")
        if self.latency_s is not None and self.latency_s < 0:
            raise ConfigError(f"assumed latency must be >= 0, got {self.latency_s}")

    def took(self, measured_s: float) -> float:
        """The clock time an inference took: assumed on a simulated clock, else measured."""
        return measured_s if self.latency_s is None else self.latency_s


IMMEDIATE = Delivery()


def simulated(latency_s: float = 0.0, delay_s: float = 0.0) -> Delivery:
    """Replay and sim: inference takes ``latency_s`` of the simulated clock, the chunk arrives ``delay_s`` later."""
    return Delivery(True, latency_s, delay_s)
