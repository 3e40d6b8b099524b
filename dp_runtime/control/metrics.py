"""What the control loop counts and times: statistics, latency and command-period histories, continuity.

Histories are bounded (deques), so a node that runs for days keeps constant memory.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .continuity import BoundaryJumps
from .discontinuity import Discontinuity
from .status import RunnerStatus, percentiles_ms


@dataclass
class RunnerStats:
    chunks: int = 0
    inference_errors: int = 0
    stale_refusals: int = 0
    invalid_inputs: int = 0
    overruns: int = 0  # inferences that took longer than a chunk lasts
    commands: int = 0
    discontinuities: int = 0  # breaks that ended the plan's authority (departure, input gap, clock jump)
    last_error: str = ""
    last_discontinuity: str = ""


MAX_CAUSES = 20  # kinds of input problem counted apiece (a bounded record however long the node runs)


class RunnerMetrics:
    def __init__(self) -> None:
        self.stats = RunnerStats()
        self.input_problems: dict[str, list] = {}  # cause key -> [its first message, count]
        self.jumps = BoundaryJumps()
        self.obs_to_command: deque[float] = deque(maxlen=200)
        self.command_times: deque[float] = deque(maxlen=500)

    def issued(self, t_obs: float | None, now: float) -> None:
        """Account one published command (or trajectory); ``t_obs``: the first command of a new chunk."""
        self.stats.commands += 1
        self.command_times.append(time.perf_counter())
        if t_obs is not None:  # how old the chunk's observation is at its first command
            self.obs_to_command.append(now - t_obs)

    def discontinuity(self, d: Discontinuity) -> None:
        """Counted; the runner drops its queue on every break, which also ends the jump sequence."""
        self.stats.discontinuities += 1
        self.stats.last_discontinuity = f"at {d.stamp:.3f}: {d.reason}"

    def rejected(self, cause: str, msg: str) -> None:
        """One unusable input, counted under its kind of problem (listed by its first message)."""
        self.stats.invalid_inputs += 1
        entry = self.input_problems.get(cause)
        if entry is not None:
            entry[1] += 1
        elif len(self.input_problems) < MAX_CAUSES:
            self.input_problems[cause] = [msg, 1]

    def snapshot(self, **state) -> RunnerStatus:
        """RunnerStatus of these figures plus the loop's ``state`` (running, stale, ages, queue, depth, ...)."""
        times = np.asarray(self.command_times)
        periods = np.diff(times) if times.size > 11 else np.zeros(0)
        s = self.stats
        return RunnerStatus(chunks=s.chunks, inference_errors=s.inference_errors, stale_refusals=s.stale_refusals,
                            invalid_inputs=s.invalid_inputs, overruns=s.overruns, commands=s.commands,
                            last_error=s.last_error, discontinuities=s.discontinuities,
                            last_discontinuity=s.last_discontinuity, command_period_ms=percentiles_ms(periods, 50, 99),
                            obs_to_command_ms=percentiles_ms(self.obs_to_command, 50, 100),
                            chunk_switches=self.jumps.switches, boundary_jump_ratio=self.jumps.ratio(),
                            input_problems={m: n for m, n in self.input_problems.values()}, **state)
