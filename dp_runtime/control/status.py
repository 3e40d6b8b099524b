"""RunnerStatus: one snapshot of the control loop, read by the node's /diagnostics and by replay.

Histories behind these figures are bounded (deques), so a node that runs for
days keeps constant memory.
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


@dataclass
class RunnerStatus:
    running: bool
    stale: dict[str, float]  # stale inputs at the snapshot time (empty: all fresh)
    ages: dict[str, float]  # age of each input's newest sample, s (inf: never received)
    queue: QueueStats
    queue_depth: int
    chunks: int = 0
    inference_errors: int = 0
    stale_refusals: int = 0
    invalid_inputs: int = 0
    overruns: int = 0
    commands: int = 0  # commands issued (per-tick commands and per-chunk trajectories)
    last_error: str = ""
    latency_ms: list[float] | None = None  # median, max over recent chunks
    command_period_ms: list[float] | None = None  # p50, p99 of wall-clock periods between commands
    obs_to_command_ms: list[float] | None = None  # p50, max: observation stamp -> first command of its chunk
    extra: dict[str, str] = field(default_factory=dict)

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
        out = {
            "inference_latency_ms_median": f"{lat[0]:.1f}" if lat else "n/a",
            "inference_latency_ms_max": f"{lat[1]:.1f}" if lat else "n/a",
            "chunks": str(self.chunks), "queue_depth": str(self.queue_depth),
            "dropped_actions": str(self.queue.dropped), "skipped_actions": str(self.queue.skipped),
            "starvation_count": str(self.queue.starved), "stale_refusals": str(self.stale_refusals),
            "invalid_inputs": str(self.invalid_inputs), "inference_errors": str(self.inference_errors),
            "inference_overruns": str(self.overruns), "commands_published": str(self.commands),
            "last_error": self.last_error,
        }
        if self.command_period_ms:
            out["command_period_ms_p50"] = f"{self.command_period_ms[0]:.2f}"
            out["command_period_ms_p99"] = f"{self.command_period_ms[1]:.2f}"
        if self.obs_to_command_ms:
            out["obs_to_first_command_ms_p50"] = f"{self.obs_to_command_ms[0]:.1f}"
            out["obs_to_first_command_ms_max"] = f"{self.obs_to_command_ms[1]:.1f}"
        out.update(self.extra)
        out.update({f"age.{k}": ("never" if math.isinf(a) else f"{a:.3f}") for k, a in self.ages.items()})
        return out
