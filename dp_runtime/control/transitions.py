"""How a new chunk meets the actions already queued: one table entry per transition mode.

Each entry says whether the new chunk is denoised with the committed actions held fixed (which
needs the bundle's inpainting step graph), which actions it holds and how much, and how it merges
into the queue when it arrives. The name is resolved once, at configuration; a new mode is one entry.

``soft_inpaint`` is the soft mask of real-time chunking (Black, Galliker, Levine 2025): the actions
due before the new chunk can arrive are frozen as in ``inpaint``, and the rest of the previous
chunk's plan that overlaps the new one guides it with weights ``inpaint_decay ** j`` (j = 1, 2, ...
after the frozen prefix). The guidance is weighted replacement (RePaint-style) in the same
inpainting graph, so it runs in every exported format; RTC's pseudo-inverse guidance needs the
UNet's vector-Jacobian product, which an ONNX graph does not give (README, Chunk transitions).
Mixed at every step, the weights compound: the whole overlap ends up close to the previous plan.
``soft_inpaint_early`` holds the same actions only through the noisiest share of the steps (the
weight), so the previous plan chooses the course and the new observation fits the values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..holds import Hold, early_steps, every_step
from ..spec import PolicySpec
from .action_queue import ActionQueue

Committed = tuple[np.ndarray, np.ndarray]  # raw actions (H, A) and mask (H,) on the new chunk's horizon:
#                                             bool (held), or float32 weights in [0, 1] (soft)


@dataclass(frozen=True)
class Plan:
    """A chunk's whole predicted horizon, raw actions (H, A): slot k is due at t_obs + (k - execute_start) * dt
    (the executed slice is what the queue holds; the slots after it are what the policy planned next)."""
    t_obs: float
    actions: np.ndarray
    held_until: float = -math.inf  # due time of the last executed action held fixed to the previous plan's


def nothing_committed(queue: ActionQueue, spec: PolicySpec, t_obs: float, arrive: float, previous: Plan | None,
                      decay: float) -> Committed | None:
    return None


def due_before_arrival(queue: ActionQueue, spec: PolicySpec, t_obs: float, arrive: float,
                       previous: Plan | None = None, decay: float = 0.0) -> Committed | None:
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


def frozen_then_decaying(queue: ActionQueue, spec: PolicySpec, t_obs: float, arrive: float, previous: Plan | None,
                         decay: float) -> Committed | None:
    """The action executing now and the committed prefix at weight 1, then the previous plan's slots that the new
    horizon overlaps after arrival at weights decay, decay**2, ... (float32 weights). The old and new grids
    are offset by the camera phase, so the slot right after the prefix may be due just before the
    expected arrival with no committed action on it: it is guided too, not left free between the two.
    A longer gap (the queue ran dry before arrival, the robot held still) is not: the previous plan's
    timing no longer holds there."""
    frozen = due_before_arrival(queue, spec, t_obs, arrive)
    h, start, dt = spec.horizon, spec.action.execute_start, queue.dt
    known = np.zeros((h, spec.action.dim), np.float32) if frozen is None else frozen[0]
    weights = np.zeros(h, np.float32) if frozen is None else frozen[1].astype(np.float32)
    if previous is not None and queue.last is not None:
        # The action executing now is held too (RTC's mask starts at weight 1): a chunk started between two
        # ticks and arriving before the next has no committed prefix, and its first action, free of any
        # anchor, would jump from the one the robot is executing.
        due, action = queue.last
        k = start + math.floor((due - t_obs) / dt + 0.5)
        if 0 <= k < h and weights[k] == 0:
            known[k], weights[k] = action, 1.0
    if previous is not None:
        j = 0
        first = next((k for k in range(h) if t_obs + (k - start) * dt > arrive + 1e-9), h)
        frozen_slots = np.flatnonzero(weights)
        if frozen_slots.size and frozen_slots[-1] == first - 2:
            first -= 1  # the one slot the grids' offset left between the prefix and arrival
        for k in range(first, h):
            due = t_obs + (k - start) * dt
            if weights[k] > 0:
                continue
            kp = start + math.floor((due - previous.t_obs) / dt + 0.5)  # half up, as due_before_arrival
            if not 0 <= kp < len(previous.actions):
                break
            j += 1
            known[k], weights[k] = previous.actions[kp], decay ** j
    return (known, weights) if weights.any() else None


def replace_queue(queue: ActionQueue, actions: np.ndarray, t_obs: float, arrival: float, blend_actions: int,
                  held_until: float) -> int:
    return queue.push(actions, t_obs, arrival, held_until=held_until)


def blend_into_queue(queue: ActionQueue, actions: np.ndarray, t_obs: float, arrival: float, blend_actions: int,
                     held_until: float) -> int:
    return queue.push(actions, t_obs, arrival, blend=blend_actions, held_until=held_until)


@dataclass(frozen=True)
class Transition:
    name: str
    inpaints: bool  # denoise the new chunk with the committed actions held fixed (the inpainting step graph)
    commits: Callable[[ActionQueue, PolicySpec, float, float, Plan | None, float], Committed | None]
    merge: Callable[[ActionQueue, np.ndarray, float, float, int, float], int]  # -> actions dropped as already due
    doc: str
    hold: Hold = every_step  # how the weights hold at each DDIM step (holds.py)
    decay: float = 0.0  # inpaint_decay auto: the value measured best for this transition (README, Defaults)

    @property
    def masks_per_step(self) -> bool:
        """Whether the mask changes between DDIM steps (a compiled chunk program cannot do that)."""
        return self.hold is not every_step


TRANSITIONS: dict[str, Transition] = {t.name: t for t in (
    Transition("replace", False, nothing_committed, replace_queue,
               "the new chunk replaces the queue"),
    Transition("blend", False, nothing_committed, blend_into_queue,
               "the new chunk cross-fades in over blend_actions"),
    Transition("inpaint", True, due_before_arrival, replace_queue,
               "the new chunk is denoised with the committed actions held fixed (bundle exported with --inpaint)"),
    Transition("soft_inpaint", True, frozen_then_decaying, replace_queue,
               "as inpaint, and the rest of the previous chunk's plan guides the new one with weights "
               "inpaint_decay ** j (real-time chunking's soft mask; bundle exported with --inpaint)",
               decay=0.6),
    Transition("soft_inpaint_early", True, frozen_then_decaying, replace_queue,
               "as soft_inpaint, but the j-th action of the previous plan is held fully for the noisiest "
               "inpaint_decay ** j share of the DDIM steps, then left free (bundle exported with --inpaint; "
               "backend onnxruntime or torchscript)", early_steps, 0.9),
)}


AUTO = "auto"
# chunk_transition auto: the first of these the engine runs. Measured over reach, around and track (README,
# Defaults): soft_inpaint_early (with chunk_noise aligned, inpaint_decay 0.9) is the best or within noise of
# the best on every task; soft_inpaint where the mask cannot change between steps (compiled, remote); blend
# where the bundle has no inpainting step graph (smoother than replace, the same success).
AUTO_ORDER = ("soft_inpaint_early", "soft_inpaint", "blend")


def transition(name: str) -> Transition | None:
    """The table entry for ``name``; None for auto (resolved against the engine by ``for_engine``)."""
    if name == AUTO:
        return None
    try:
        return TRANSITIONS[name]
    except KeyError:
        raise ConfigError(f"chunk_transition must be one of {AUTO}, {', '.join(TRANSITIONS)}, "
                          f"got {name!r}") from None


def unsupported(t: Transition, engine) -> str | None:
    """Why ``engine`` cannot run ``t`` (None: it can), with the fix."""
    if t.inpaints and not engine.can_inpaint:
        return (f"chunk_transition: {t.name} needs a bundle with the inpainting step graph; re-export it with "
                "dp-export --inpaint (or use replace or blend)")
    if t.masks_per_step and not engine.masks_per_step:
        return (f"chunk_transition: {t.name} changes the inpainting mask between DDIM steps, which this engine "
                f"({getattr(engine, 'provider', type(engine).__name__)}) cannot; use backend onnxruntime or "
                "torchscript (or chunk_transition soft_inpaint)")
    return None


def for_engine(chosen: Transition | None, engine, deltas: bool = False) -> tuple[Transition, str]:
    """The transition to run and a line for the log: the one configured (refused with the reason when the
    engine cannot run it), or auto's first choice the engine runs, saying what it passed over and why.

    ``deltas``: the actions are per-step deltas (robosuite OSC). Auto then replaces: holding a new chunk to the
    old plan's actions keeps a position continuous, but keeps a delta's velocity going (the grasp_delta policy
    turned on past the bar: in-process, 10 episodes, auto's soft_inpaint_early 10 %, replace with fresh noise 50 %)."""
    if chosen is not None:
        why = unsupported(chosen, engine)
        if why:
            raise ConfigError(why)
        return chosen, f"chunk_transition {chosen.name}"
    if deltas:
        return TRANSITIONS["replace"], "chunk_transition auto: replace (per-step delta actions)"
    passed = []
    for name in AUTO_ORDER:
        why = unsupported(TRANSITIONS[name], engine)
        if why is None:
            note = f" (passed over: {'; '.join(passed)})" if passed else ""
            return TRANSITIONS[name], f"chunk_transition auto: {name}{note}"
        passed.append(why.removeprefix("chunk_transition: "))
    raise AssertionError("blend runs on every engine")
