"""When to start the next inference: the lead (actions left in the queue) and the latency expected.

``inference_lead: auto`` starts inference early enough that the next chunk arrives just before the
queue runs dry: from the p95 of recent inference latencies (the warm-up's before the first), or the
latency a simulated clock assumes, plus any injected delivery delay and the execution latency.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable

import numpy as np

from .delivery import Delivery


class InferenceScheduler:
    def __init__(self, lead: int | str, dt: float, n_action_steps: int, execution_latency: float,
                 delivery: Delivery, warmup_latency_s: Callable[[], float] = lambda: 0.0):
        self.fixed_lead = None if lead == "auto" else int(lead)
        self.dt = dt
        self.n_action_steps = n_action_steps
        self.execution_latency = execution_latency
        self.delivery = delivery
        self.warmup_latency_s = warmup_latency_s
        self.latencies: deque[float] = deque(maxlen=200)
        self._p95: float | None = None  # of latencies, updated per chunk (read every tick by the auto lead)

    def record(self, latency_s: float) -> None:
        self.latencies.append(latency_s)
        self._p95 = float(np.percentile(np.asarray(self.latencies), 95))

    def expected_latency(self) -> float:
        """Seconds from starting an inference to its chunk arriving."""
        if self.delivery.latency_s is not None:
            lat = self.delivery.latency_s
        elif self._p95 is not None:
            lat = self._p95
        else:
            lat = self.warmup_latency_s()  # the engine's last warm-up
        return lat + self.delivery.delay_s

    def lead(self) -> int:
        """Actions left in the queue when the next inference starts."""
        if self.fixed_lead is not None:
            return self.fixed_lead
        ahead = math.ceil((self.expected_latency() + self.execution_latency) / self.dt - 1e-9) + 1
        return int(min(max(ahead, 1), self.n_action_steps - 1))
