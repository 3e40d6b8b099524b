"""How a new chunk meets the actions already queued: one table entry per transition mode.

Each entry says whether the new chunk is denoised with the committed actions held fixed (which
needs the bundle's inpainting step graph), which queued actions it commits, and how it merges into
the queue when it arrives. The name is resolved once, at configuration; a new mode is one entry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..spec import PolicySpec
from .action_queue import ActionQueue

Committed = tuple[np.ndarray, np.ndarray]  # raw actions (H, A) and mask (H,) on the new chunk's horizon


def nothing_committed(queue: ActionQueue, spec: PolicySpec, t_obs: float, arrive: float) -> Committed | None:
    return None


def due_before_arrival(queue: ActionQueue, spec: PolicySpec, t_obs: float, arrive: float) -> Committed | None:
    """The queued actions that execute before the new chunk can arrive, placed on its horizon."""
    dt = queue.dt
    h, start = spec.horizon, spec.action.execute_start
    known = np.zeros((h, spec.action.dim), np.float32)
    mask = np.zeros(h, bool)
    for due, action in queue.items:
        if due > arrive + 1e-9:
            break
        # Half up, never Python's half-to-even: the old chunk's grid is offset from the new one by the camera
        # phase, and at half a period round() would put two committed actions on one slot and skip the next.
        k = start + math.floor((due - t_obs) / dt + 0.5)
        if 0 <= k < h:
            known[k], mask[k] = action, True
    return (known, mask) if mask.any() else None


def replace_queue(queue: ActionQueue, actions: np.ndarray, t_obs: float, arrival: float, blend_actions: int) -> int:
    return queue.push(actions, t_obs, arrival)


def blend_into_queue(queue: ActionQueue, actions: np.ndarray, t_obs: float, arrival: float, blend_actions: int) -> int:
    return queue.push(actions, t_obs, arrival, blend=blend_actions)


@dataclass(frozen=True)
class Transition:
    name: str
    inpaints: bool  # denoise the new chunk with the committed actions held fixed (the inpainting step graph)
    commits: Callable[[ActionQueue, PolicySpec, float, float], Committed | None]
    merge: Callable[[ActionQueue, np.ndarray, float, float, int], int]  # -> actions dropped as already due
    doc: str


TRANSITIONS: dict[str, Transition] = {t.name: t for t in (
    Transition("replace", False, nothing_committed, replace_queue,
               "the new chunk replaces the queue"),
    Transition("blend", False, nothing_committed, blend_into_queue,
               "the new chunk cross-fades in over blend_actions"),
    Transition("inpaint", True, due_before_arrival, replace_queue,
               "the new chunk is denoised with the committed actions held fixed (bundle exported with --inpaint)"),
)}


def transition(name: str) -> Transition:
    try:
        return TRANSITIONS[name]
    except KeyError:
        raise ConfigError(f"chunk_transition must be one of {', '.join(TRANSITIONS)}, got {name!r}") from None
