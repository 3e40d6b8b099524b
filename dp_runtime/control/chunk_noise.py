"""Each chunk's initial noise: one table entry per ``chunk_noise`` option, resolved once.

A diffusion policy's choice between modes (pass the obstacle left or right, go on with this target or
that one) is made mostly by the initial noise. ``fresh`` draws new noise for every chunk (the engine
draws it from the chunk's seed), so every chunk chooses again; ``aligned`` gives the new chunk the
previous chunk's noise on the due times both cover (its slot k is the previous slot k + shift) and fresh
noise beyond, so a new chunk tends to choose what the previous one chose, whatever the transition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class ChunkNoise:
    t_obs: float
    noise: np.ndarray  # (horizon, A) float32: the chunk's initial noise


NoiseRule = Callable[[ChunkNoise | None, float, float, int | None, tuple[int, int]], ChunkNoise | None]


def fresh(previous: ChunkNoise | None, t_obs: float, dt: float, seed: int | None,
          shape: tuple[int, int]) -> ChunkNoise | None:
    """None: the engine draws the chunk's noise from its seed (as it always has)."""
    return None


def aligned(previous: ChunkNoise | None, t_obs: float, dt: float, seed: int | None,
            shape: tuple[int, int]) -> ChunkNoise:
    """The seed's noise (the engine's draw for that seed), with the previous chunk's noise moved onto the
    slots due at the same times (half up, as the committed actions are placed)."""
    noise = np.random.default_rng(seed).standard_normal((1, *shape)).astype(np.float32)[0]
    if previous is not None:
        shift = math.floor((t_obs - previous.t_obs) / dt + 0.5)
        if 0 <= shift < len(noise):
            noise[:len(noise) - shift] = previous.noise[shift:]
    return ChunkNoise(t_obs, noise)


CHUNK_NOISE: dict[str, NoiseRule] = {"fresh": fresh, "aligned": aligned}
AUTO = "auto"  # aligned where the engine takes a chunk's noise (every local format), fresh where not (remote)


def noise_rule(name: str) -> NoiseRule | None:
    """The rule for ``name``; None for auto (resolved against the engine by ``for_engine``)."""
    if name == AUTO:
        return None
    try:
        return CHUNK_NOISE[name]
    except KeyError:
        raise ConfigError(f"chunk_noise must be one of {AUTO}, {', '.join(CHUNK_NOISE)}, got {name!r}") from None


def for_engine(chosen: NoiseRule | None, engine, deltas: bool = False) -> tuple[NoiseRule, str]:
    """The rule to run and a line for the log; aligned on an engine that does not take noise is refused.
    ``deltas`` (per-step delta actions): auto is fresh, as chunk_transition auto replaces (transitions.for_engine):
    noise aligned with the old plan's draws the old plan's velocity again."""
    takes = engine.takes_noise
    if chosen is None and deltas:
        return fresh, "chunk_noise auto: fresh (per-step delta actions)"
    if chosen is None:
        return (aligned, "chunk_noise auto: aligned") if takes else (
            fresh, f"chunk_noise auto: fresh ({type(engine).__name__} draws each chunk's noise itself)")
    if chosen is not fresh and not takes:
        raise ConfigError("chunk_noise: aligned gives each chunk its initial noise, which this engine "
                          f"({type(engine).__name__}) does not take; use chunk_noise fresh")
    return chosen, f"chunk_noise {chosen.__name__}"
