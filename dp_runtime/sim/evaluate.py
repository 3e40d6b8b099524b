"""Closed-loop evaluation in simulated time, in one process (no DDS): policy -> runner -> arm.

Uses the node's PolicyRunner (observation history, action queue, timing) so a
torch policy or a bundle is evaluated exactly as the node would drive it, only
faster than real time. The BatchNorm experiment uses this; the demo's headline
figure comes from the real two-process DDS run instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..control import PolicyRunner, RunnerConfig, simulated
from ..control.continuity import BoundaryJumps
from ..engine.engine import Prediction
from ..holds import Hold, every_step
from ..spec import action_scale
from .arm import JOINTS
from .record import SimTopics
from .tasks import TASKS, SimTask


class TorchPolicyEngine:
    """A torch DiffusionPolicy behind the engine interface PolicyRunner uses (no bundle needed)."""

    def __init__(self, policy: torch.nn.Module):
        self.policy = policy.eval()
        spec = policy.cfg.policy_spec()
        self.spec = replace(spec, action=replace(spec.action, scale=action_scale(policy.normalizer.stats())))
        self.image_shapes, self.low_dim_sizes = self.spec.image_shapes, self.spec.low_dim_sizes
        self.horizon, self.action_dim = self.spec.horizon, self.spec.action.dim

    can_inpaint = True
    masks_per_step = True
    takes_noise = True
    warmup_latency_s = 0.0

    def predict(self, history: dict[str, np.ndarray], seed: int | None = None, known: np.ndarray | None = None,
                mask: np.ndarray | None = None, hold: Hold = every_step, noise: np.ndarray | None = None) -> Prediction:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = (torch.randn((1, self.horizon, self.action_dim), generator=gen) if noise is None
                 else torch.from_numpy(np.asarray(noise, np.float32))[None])
        t0 = time.perf_counter()
        with torch.no_grad():
            obs = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in history.items()}
            inpaint = {} if known is None else {"known": torch.from_numpy(np.asarray(known, np.float32))[None],
                                                 "mask": torch.from_numpy(_as_mask(mask))[None]}
            actions = self.policy.sample(obs, noise, hold=hold, **inpaint)[0].numpy()
        return Prediction(actions, time.perf_counter() - t0, seed)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    """A bool mask as it is; weights (soft_inpaint) as float32: a bool cast would hold every weighted
    action fully, i.e. hard inpainting of the whole overlap."""
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask.astype(np.float32)


@dataclass
class EpisodeResult:
    success: bool
    seconds: float
    final_distance: float
    jumps: BoundaryJumps | None = None  # continuity at the episode's chunk switches
    outcome: dict[str, float] = field(default_factory=dict)  # the task's own measures (collision, tracking_error)
    breaks: list[float] = field(default_factory=list)  # s into the episode when the runner saw a discontinuity


def boundary_jump_ratio(results: list[EpisodeResult]) -> tuple[float | None, int]:
    """(ratio, switches) over all episodes: boundary and inside steps pooled, then the ratio per dim."""
    pooled = BoundaryJumps.pooled([r.jumps for r in results if r.jumps is not None])
    return pooled.ratio(), pooled.switches


SETTLE_S = 0.3  # dp-sim ignores commands this long after a reset (the previous episode's chunk in flight)


def run_episodes(engine: Any, episodes: int, seed: int = 0, task: SimTask = TASKS["reach"],
                 topics: SimTopics = SimTopics(), delay_s: float = 0.0, continuous: bool = False,
                 **runner: Any) -> list[EpisodeResult]:
    """Closed loop of ``task`` on the sim clock; inference takes no sim time, each chunk arrives ``delay_s``
    after its inference starts (deterministic).

    ``continuous``: one runner for all episodes, as a node that nobody resets sees them: the sim clock runs
    on, each new episode teleports the arm and the sim ignores commands for SETTLE_S, as dp-sim does (the
    runner's jumps are then on the first result only). Otherwise a fresh runner per episode (a reset).
    ``runner``: RunnerConfig fields to evaluate (chunk_transition, blend_actions, inference_lead); by
    default the next inference starts when the queue is empty.
    """
    settings = {"inference_lead": 0, **runner}
    arm = task.arm(seed)
    dt_phys = 1.0 / arm.cfg.physics_hz
    every = topics.every(arm.cfg.physics_hz)
    image_key = next(iter(engine.image_shapes))
    state_key = next(iter(engine.low_dim_sizes))
    joints = list(JOINTS)

    def new_runner(run_seed: int) -> PolicyRunner:
        return PolicyRunner(engine, RunnerConfig(topics.control_hz, max_obs_age=1.0, seed=run_seed, **settings),
                            delivery=simulated(0.0, delay_s))

    results = []
    runner = new_runner(seed * 100_000) if continuous else None
    k = 0  # physics steps on the sim clock (continuous across episodes when continuous)
    for ep in range(episodes):
        arm.reset()
        if not continuous:
            runner, k = new_runner(seed * 100_000 + ep * 1000), 0
        start, seen, breaks = k, runner.stats.discontinuities, []
        while True:
            t = k * dt_phys
            if k % every["camera"] == 0:
                runner.add(image_key, t, arm.render())
            if k % every["joints"] == 0:
                runner.add(state_key, t, arm.state.q.astype(np.float32), joint_names=joints)
            if k % every["control"] == 0:
                if runner.needs_inference(t):
                    runner.infer(t)
                cmd = runner.tick(t)
                if cmd is not None and (ep == 0 or not continuous or (k - start) * dt_phys >= SETTLE_S):
                    arm.command(cmd)
            if runner.stats.discontinuities > seen:
                seen = runner.stats.discontinuities
                breaks.append(round((k - start) * dt_phys, 3))
            arm.step(dt_phys)
            k += 1
            if arm.done():
                break
        results.append(EpisodeResult(arm.succeeded(), arm.state.t, arm.distance(),
                                     runner.jumps if not continuous or ep == 0 else None, arm.outcome(), breaks))
    return results


def run_node_episodes(bundle: str, task: SimTask, episodes: int, seed: int = 0, reset_episodes: bool = False,
                      latency_s: float | None = None, **params: Any) -> list[dict]:
    """The DDS closed loop of dp-demo in one process, on the sim clock: the task's node parameters
    (config/<task.node_config>, ``params`` over them), the sim's messages through the node's readers, the runner's
    commands built by the node's interfaces and read back by the sim (messages.py), one runner across the
    episodes (no ~/reset: the runner finds each teleport itself; commands ignored for SETTLE_S after it, as dp-sim
    does; ``reset_episodes``: ~/reset at each episode's start instead). Inference takes its measured time on the
    sim clock, as in the DDS loop (so two runs differ: the same bundle gave 72 % and 77 % over 100 episodes), or
    ``latency_s`` of it (the same result every run). An unusable input is rejected and a bad command ignored, as
    the node and dp-sim do. For ranking policies over many episodes: the headline figures are the real
    two-process run's. Returns each episode's result as dp-sim reports it (and the commands it ignored, if any)."""
    from ..control import Delivery
    from ..errors import DpRuntimeError
    from ..ros.params import load_params_file
    from ..ros.runtime import open_runtime
    from . import messages
    from .demo import config_path
    p, flat = load_params_file(config_path(task.node_config), bundle=str(bundle), seed=seed, **params)
    rt = open_runtime(p, lambda name, default: flat.get(name, default), delivery=Delivery(True, latency_s, 0.0),
                      info=lambda msg: None, warn=lambda cause, msg: None)
    if rt.interface.per_chunk:
        raise ValueError(f"command_interface {rt.interface.name}: the in-process loop publishes per tick")
    runner, topics = rt.runner, SimTopics(commands=p.command_topic)  # as dp-demo starts dp-sim
    readers: dict[str, list] = {}
    for t in rt.topics:
        joints = t.joint_names if t.type == "joint_state" and t.joint_field == "position" else None
        readers.setdefault(t.topic, []).append((t.key, t.reader(rt.engine.image_shapes.get(t.key), p.resize_images),
                                                joints))
    arm = task.arm(seed)
    dt_phys = 1.0 / arm.cfg.physics_hz
    every = topics.every(arm.cfg.physics_hz)
    t0, k, out = 1000.0, 0, []  # stamps never zero (a zero header stamp is refused)
    for ep in range(episodes):
        if ep:
            arm.reset()
            if reset_episodes:
                runner.reset()
        start, ignored = k, 0
        while not arm.done():
            now = t0 + k * dt_phys
            for topic, msg in messages.observations(arm, topics, every, k, now):
                for key, read, joints in readers.get(topic, ()):
                    try:
                        stamp, value = read(msg, received=now)
                    except DpRuntimeError as e:
                        runner.reject(key, e, topic)
                        continue
                    runner.add(key, stamp, value, now=now, joint_names=joints)
            if k % every["control"] == 0:
                if runner.needs_inference(now):
                    runner.infer(now)
                action = runner.tick(now)
                if action is not None and (k - start) * dt_phys >= (SETTLE_S if ep else 0.0):
                    ctx = rt.command_context(now)
                    sent = [(p.command_topic, rt.interface.build(action, ctx))]
                    sent += [(o.topic, o.build(action, ctx)) for o in rt.outputs]
                    for topic, msg in sent:
                        try:
                            arm.command(messages.command(topics, topic, msg))
                        except (ValueError, DpRuntimeError):
                            ignored += 1  # as dp-sim counts and ignores it
            arm.step(dt_phys)
            k += 1
        out.append({"episode": ep, "success": bool(arm.succeeded()), "time": round(arm.state.t, 3), **arm.outcome(),
                    **({"ignored_commands": ignored} if ignored else {})})
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m dp_runtime.sim.evaluate BUNDLE --task grasp_delta --episodes 100 [--param NAME:=VALUE]: the
    in-process twin of dp-demo's closed loop (run_node_episodes), for ranking policies over many episodes."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m dp_runtime.sim.evaluate", description=main.__doc__.split(":")[0])
    p.add_argument("bundle")
    p.add_argument("--task", default="reach", choices=tuple(TASKS))
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reset-episodes", action="store_true")
    p.add_argument("--latency", type=float, default=None, metavar="S",
                   help="inference takes S s of the sim clock (the same result every run); default: its measured time")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE", help="a node parameter (YAML value)")
    args = p.parse_args(argv)
    import yaml
    params = {k: yaml.safe_load(v) for k, _, v in (s.partition(":=") for s in args.param)}
    t0 = time.perf_counter()
    results = run_node_episodes(args.bundle, TASKS[args.task], args.episodes, args.seed, args.reset_episodes,
                                args.latency, **params)
    for r in results:
        print(json.dumps(r))
    wins = sum(r["success"] for r in results)
    print(f"success {wins}/{len(results)} ({wins / len(results):.0%}) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
