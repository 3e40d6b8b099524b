"""How an inpainting mask holds actions across the DDIM steps: one rule per kind of transition.

The inpainting step graph takes one mask per step (weights in [0, 1]; 1 holds the action at the
known value noised to the step). ``every_step`` gives it the same mask at every step: a bool mask
(``inpaint``) holds the committed actions throughout, float weights (``soft_inpaint``) mix at every
step, which compounds (a weight of 0.1 over 16 steps holds the action ~97 %). ``early_steps`` reads a
weight as the share of the steps, noisiest first, for which the action is held fully
(``soft_inpaint_early``): the previous plan chooses the new chunk's coarse course (which side, which
target) and the last steps are free to fit it to the new observation. Weight 1 is held at every step
under both rules, so the frozen prefix stays exact. numpy only: the engine and the torch reference
share these rules.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Hold = Callable[[np.ndarray, int], list[np.ndarray]]  # (weights, steps) -> the mask of each step, noisiest first


def every_step(weights: np.ndarray, steps: int) -> list[np.ndarray]:
    """The same mask (the same object) at every step."""
    return [weights] * steps


def early_steps(weights: np.ndarray, steps: int) -> list[np.ndarray]:
    """Step i (of ``steps``, noisiest first) holds the actions whose weight * steps > i, fully (0/1 masks,
    float32); consecutive equal masks are the same object, so a backend binds each change once."""
    weights = np.asarray(weights, np.float32)
    out: list[np.ndarray] = []
    for i in range(steps):
        m = (weights * steps > i).astype(np.float32)
        out.append(out[-1] if out and np.array_equal(out[-1], m) else m)
    return out
