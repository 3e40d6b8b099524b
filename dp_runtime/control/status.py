"""RunnerStatus: one snapshot of the control loop, read by the node's /diagnostics and by replay.

``values()`` writes it as diagnostic_msgs key/values (strings); ``from_values()`` reads those back
into the same typed snapshot, so whoever listens to /diagnostics (real-time replay, the demo) gets
numbers without parsing strings of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .action_queue import QueueStats

OK, WARN, ERROR = "OK", "WARN", "ERROR"


def percentiles_ms(values_s, *qs: float) -> list[float] | None:
    v = np.asarray(list(values_s), dtype=np.float64) * 1e3
    return [float(np.percentile(v, q)) for q in qs] if v.size else None


PROBLEMS_SHOWN = 5  # kinds of input problem in a diagnostics message, most frequent first
QUEUE_KEYS = {"dropped": "dropped_actions", "skipped": "skipped_actions", "starved": "starvation_count"}
COUNTS = {"chunks": "chunks", "queue_depth": "queue_depth", "stale_refusals": "stale_refusals",
          "invalid_inputs": "invalid_inputs", "inference_errors": "inference_errors",
          "overruns": "inference_overruns", "commands": "commands_published", "inference_lead": "inference_lead",
          "chunk_switches": "chunk_switches", "discontinuities": "discontinuities", "limited": "ee_limited_commands"}
PAIRS = {"latency_ms": ("inference_latency_ms_median", "inference_latency_ms_max", "{:.1f}"),
         "command_period_ms": ("command_period_ms_p50", "command_period_ms_p99", "{:.2f}"),
         "obs_to_command_ms": ("obs_to_first_command_ms_p50", "obs_to_first_command_ms_max", "{:.1f}")}


@dataclass
class RunnerStatus:
    running: bool
    stale: dict[str, float] = field(default_factory=dict)  # stale inputs at the snapshot time (empty: all fresh)
    ages: dict[str, float] = field(default_factory=dict)  # age of each input's newest sample, s (inf: never)
    queue: QueueStats = field(default_factory=QueueStats)
    queue_depth: int = 0
    chunks: int = 0
    inference_errors: int = 0
    stale_refusals: int = 0
    invalid_inputs: int = 0
    overruns: int = 0
    commands: int = 0  # commands issued (per-tick commands and per-chunk trajectories)
    last_error: str = ""
    discontinuities: int = 0  # breaks that ended the plan's authority (departure, input gap, clock jump)
    limited: int = 0  # commands whose end-effector pose the workspace box or step limits changed
    last_discontinuity: str = ""  # the newest one's stamp and reason
    peak_departure: float = 0.0  # the largest departure and speed (normalized) that did not break: the margin
    peak_speed: float = 0.0  # discontinuity_threshold and discontinuity_speed have on this robot
    latency_ms: list[float] | None = None  # median, max over recent chunks
    command_period_ms: list[float] | None = None  # p50, p99 of wall-clock periods between commands
    obs_to_command_ms: list[float] | None = None  # p50, max: observation stamp -> first command of its chunk
    inference_lead: int = 0
    chunk_transition: str = ""
    chunk_switches: int = 0
    boundary_jump_ratio: float | None = None
    input_problems: dict[str, int] = field(default_factory=dict)  # kind of unusable input (first message) -> count

    def health(self, starved_before: int) -> tuple[str, str]:
        """(level, message) for diagnostics; ``starved_before`` is the starvation count last reported."""
        if not self.running:
            return OK, "stopped"
        if self.stale:
            return ERROR, "stale inputs: policy stopped"
        if self.inference_errors and self.last_error.startswith("inference"):
            return ERROR, "inference failing"
        if self.queue.starved > starved_before:
            return WARN, "action queue starved since the last report"
        return OK, "running"

    def values(self) -> dict[str, str]:
        """Diagnostics key/values (strings, as diagnostic_msgs carries them)."""
        lat = self.latency_ms
        out = {PAIRS["latency_ms"][0]: f"{lat[0]:.1f}" if lat else "n/a",
               PAIRS["latency_ms"][1]: f"{lat[1]:.1f}" if lat else "n/a"}
        out.update({key: str(getattr(self, name)) for name, key in COUNTS.items()})
        out.update({key: str(getattr(self.queue, name)) for name, key in QUEUE_KEYS.items()})
        out["last_error"] = self.last_error
        out["last_discontinuity"] = self.last_discontinuity
        out["peak_departure"] = f"{self.peak_departure:.3f}"
        out["peak_speed"] = f"{self.peak_speed:.2f}"
        for name in ("command_period_ms", "obs_to_command_ms"):
            pair = getattr(self, name)
            if pair:
                first, second, fmt = PAIRS[name]
                out[first], out[second] = fmt.format(pair[0]), fmt.format(pair[1])
        out["chunk_transition"] = self.chunk_transition
        ratio = self.boundary_jump_ratio
        out["boundary_jump_ratio"] = "n/a" if ratio is None else f"{ratio:.3f}"
        out.update({f"age.{k}": ("never" if math.isinf(a) else f"{a:.3f}") for k, a in self.ages.items()})
        top = sorted(self.input_problems.items(), key=lambda kv: -kv[1])[:PROBLEMS_SHOWN]
        out.update({f"input_problem.{i}": f"{n} x {msg}" for i, (msg, n) in enumerate(top)})
        return out

    @classmethod
    def from_values(cls, values: dict[str, str], running: bool = True) -> "RunnerStatus":
        """The snapshot a /diagnostics message carried (figures it lacks stay at their defaults)."""
        def number(key: str) -> float | None:
            v = values.get(key, "n/a")
            return None if v in ("n/a", "") else float(v)

        pairs = {}
        for name, (first, second, _) in PAIRS.items():
            a, b = number(first), number(second)
            pairs[name] = None if a is None or b is None else [a, b]
        ages = {k[4:]: (math.inf if v == "never" else float(v)) for k, v in values.items() if k.startswith("age.")}
        problems = dict(reversed(v.split(" x ", 1)) for k, v in values.items() if k.startswith("input_problem."))
        return cls(running, ages=ages,
                   queue=QueueStats(**{name: int(values[key]) for name, key in QUEUE_KEYS.items() if key in values}),
                   last_error=values.get("last_error", ""), last_discontinuity=values.get("last_discontinuity", ""),
                   peak_departure=number("peak_departure") or 0.0, peak_speed=number("peak_speed") or 0.0,
                   chunk_transition=values.get("chunk_transition", ""),
                   boundary_jump_ratio=number("boundary_jump_ratio"),
                   input_problems={msg: int(n) for msg, n in problems.items()},
                   **{name: int(values[key]) for name, key in COUNTS.items() if key in values}, **pairs)
