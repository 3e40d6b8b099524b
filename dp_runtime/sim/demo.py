"""dp-demo: the whole product on an embedded default, no robot needed.

    dp-demo [--task reach|around|track] [--out DIR] [--quick] [--episodes N] [--remote]

Records expert demonstrations of the sim arm as an MCAP bag, converts them
with dp-dataset, trains a small GroupNorm policy with EMA, exports the bundle,
then runs the sim and the policy node as two processes over real DDS for N
closed-loop episodes, and writes a replay report of one expert episode. With
--remote the node runs the bundle on a dp-serve (Ray Serve) server started on
this machine (backend: remote) instead of in its own process. Every
artifact is cached in DIR (written under a temporary name, then renamed), so a
second run, or a run after an interruption, reuses what is complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..control import RunnerStatus
from ..errors import ConfigError
from ..ros.commands import command_interface
from ..ros.process import stop_process
from ..ros.side_node import SideNode
from .tasks import TASKS, DemoPlan, SimTask, sim_task

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def config_path(name: str) -> Path:
    """config/ in a checkout, or share/dp_runtime/config when installed."""
    for base in (CONFIG_DIR, Path(sys.prefix) / "share" / "dp_runtime" / "config"):
        if (base / name).exists():
            return base / name
    raise FileNotFoundError(f"config file {name} not found in {CONFIG_DIR} or the install prefix")


def step(name: str, target: Path, build) -> Path:
    """Build ``target`` once; a complete target (renamed into place) is reused."""
    if target.exists():
        print(f"[cached] {name}: {target}")
        return target
    t0 = time.time()
    print(f"[build] {name} ...", flush=True)
    build(target)
    print(f"[done] {name} in {time.time() - t0:.0f} s: {target}", flush=True)
    return target


# -- build steps ---------------------------------------------------------------------
def build_demos(n: int, seed: int, task: SimTask):
    def go(target: Path) -> None:
        from .record import record_demonstrations
        info = record_demonstrations(target, n, seed=seed, task=task)
        (target.parent / "demos_info.json").write_text(json.dumps(info))
    return go


def build_dataset(bag: Path, task: SimTask):
    def go(target: Path) -> None:
        from ..dataset import DatasetConfig, bag_to_dataset, policy_config, save_dataset
        cfg = DatasetConfig.load(config_path(task.dataset_config))
        cfg = replace(cfg, policy=task.policy_overrides(cfg.policy))
        arrays, info = bag_to_dataset(bag, cfg)
        save_dataset(target, arrays, policy_config(cfg, info), info)
    return go


def build_checkpoint(dataset: Path, plan: DemoPlan, seed: int):
    def go(target: Path) -> None:
        import torch

        from ..dataset import load_dataset
        from ..train import TrainConfig, train
        torch.set_num_threads(min(4, os.cpu_count() or 1))
        cfg, data = load_dataset(dataset)
        t0 = time.time()
        train(cfg, data, target, TrainConfig(steps=plan.train_steps, batch_size=plan.batch_size, lr=plan.lr,
                                             seed=seed, log_every=max(plan.train_steps // 10, 1)),
              progress=lambda s, loss: print(f"  step {s}/{plan.train_steps}: loss {loss:.4f} "
                                             f"({time.time() - t0:.0f} s)", flush=True))
    return go


def build_bundle(checkpoint: Path):
    def go(target: Path) -> None:
        from ..export import ExportOptions, export_bundle
        export_bundle(checkpoint, target, ExportOptions(), progress=lambda m: print(f"  {m}", flush=True))
    return go


def build_report(bundle: Path, out: Path, seed: int, task: SimTask):
    def go(target: Path) -> None:
        from ..engine import load_bundle
        from ..replay.pipeline import ReplaySetup, replay_offline
        from ..replay.report import summary, write_report
        from ..ros.params import load_params_file
        from .record import record_demonstrations
        bag = out / "episode_bag"
        if not bag.exists():
            record_demonstrations(bag, 1, seed=seed + 999, task=task, hold_s=3.0)  # done, then hold: a few chunks
        params, flat = load_params_file(config_path(task.node_config), bundle=str(bundle))
        setup = ReplaySetup.create(load_bundle(bundle), params, flat, params.command_topic)
        result = replay_offline(bag, setup, seed=seed)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        m = write_report(tmp, result, setup)
        tmp.rename(target)
        print(summary(m, target))
    return go


# -- closed loop over DDS ------------------------------------------------------------
def free_domain_id(start: int) -> int:
    """A ROS_DOMAIN_ID nobody else is using right now (a busy domain would mix in foreign traffic)."""
    for domain in [start + i for i in range(40)]:
        domain = 1 + (domain - 1) % 200
        probe = SideNode("dp_demo_probe", domain)
        time.sleep(0.8)
        others = [n for n in probe.node.get_node_names() if n != "dp_demo_probe"]
        probe.close()
        if not others:
            return domain
        print(f"  domain {domain} is busy ({len(others)} nodes); trying the next one")
    raise RuntimeError("no free ROS_DOMAIN_ID found")


class Watcher(SideNode):
    """Subscribes (own rclpy context) to episode results, commands and the node's diagnostics; with
    ``reset_episodes``, calls the node's ~/reset as each episode ends (as an evaluation script resets its policy)."""

    def __init__(self, domain: int, command_topic: str, command_type: type, episode_topic: str,
                 reset_episodes: bool = False):
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        super().__init__("dp_demo_watcher", domain)
        self.episodes: list[dict] = []
        self.command_times: list[float] = []
        self.diag: dict[str, str] = {}
        self.resets = 0
        self._reset = self.node.create_client(Trigger, "/policy_node/reset") if reset_episodes else None
        self._reset_request = Trigger.Request()
        self.node.create_subscription(String, episode_topic, self._on_episode, 50)
        self.node.create_subscription(command_type, command_topic,
                                      lambda m: self.command_times.append(time.perf_counter()), 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_episode(self, msg) -> None:
        self.episodes.append(json.loads(msg.data))
        if self._reset is not None:
            self._reset.call_async(self._reset_request)
            self.resets += 1

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name.startswith("dp_runtime"):
                self.diag = {kv.key: kv.value for kv in st.values}


def read_episodes(path: Path) -> list[dict]:
    """The sim's episode record (JSON lines); a line still being written is left for the next read."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def closed_loop(bundle: Path, out: Path, episodes: int, seed: int, domain: int | None = None,
                task: SimTask = TASKS["reach"], node_params: tuple[str, ...] = (),
                reset_episodes: bool = False) -> dict:
    """``domain``: the ROS_DOMAIN_ID to run on (None: a free one); ``node_params``: more NAME:=VALUE;
    ``reset_episodes``: call the node's ~/reset at each episode end (default: nobody tells the node, which
    finds each new episode's start itself, as a discontinuity: the arm is teleported)."""
    from ..ros.params import load_params_file
    params, _ = load_params_file(config_path(task.node_config))
    domain = free_domain_id(150 + os.getpid() % 50) if domain is None else domain
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1",
               RMW_IMPLEMENTATION=os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"))
    print(f"  closed loop on ROS_DOMAIN_ID {domain}: dp-sim + policy_node, {episodes} episodes")
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    results_file = logs / "episodes.jsonl"
    watcher = Watcher(domain, params.command_topic, command_interface(params.command_interface).message_class,
                      "/sim/episode", reset_episodes)
    node = subprocess.Popen([sys.executable, "-m", "dp_runtime.ros.node", "--ros-args", "--params-file",
                             str(config_path(task.node_config)), "-p", f"bundle:={bundle}", "-p", f"seed:={seed}",
                             *[a for v in node_params for a in ("-p", v)]],
                            env=env, stdout=open(logs / "policy_node.log", "w"), stderr=subprocess.STDOUT)
    sim = None
    try:
        deadline = time.time() + 120
        while "running" not in (logs / "policy_node.log").read_text():
            if node.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"policy node did not start: {(logs / 'policy_node.log').read_text()[-2000:]}")
            time.sleep(0.2)
        results_file.unlink(missing_ok=True)
        sim = subprocess.Popen([sys.executable, "-m", "dp_runtime.sim.node", "--task", task.name,
                                "--episodes", str(episodes),
                                "--seed", str(seed + 12345), "--command-topic", params.command_topic,
                                "--results", str(results_file)],
                               env=env, stdout=open(logs / "dp_sim.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + episodes * (task.episode_seconds() + 4) + 60
        shown = 0
        while time.time() < deadline and sim.poll() is None:
            time.sleep(0.2)
            run = read_episodes(results_file)
            for e in run[shown:]:
                print(f"  episode {e['episode']}: {'success' if e['success'] else 'fail'} in {e['time']:.1f} s")
            shown = len(run)
        time.sleep(1.5)  # one more diagnostics period
    finally:
        if sim is not None:
            stop_process(sim)
        rc = stop_process(node)
        watcher.close()
    run = read_episodes(results_file)  # every episode the sim ran, from the sim's own record
    periods = np.diff(np.array(watcher.command_times)) * 1e3
    periods = periods[periods < 500]  # drop the pauses between episodes (stale inputs during reset)
    d = watcher.diag
    st = RunnerStatus.from_values(d)
    lat, period = st.latency_ms or [None, None], st.command_period_ms or [None, None]
    return {
        "domain_id": domain, "episodes": len(run),
        "success_rate": float(np.mean([e["success"] for e in run])) if run else 0.0,
        "episode_results": run, "episode_reports_received_over_dds": len(watcher.episodes),
        "command_period_ms_received": {"p50": float(np.percentile(periods, 50)) if periods.size else None,
                                       "p99": float(np.percentile(periods, 99)) if periods.size else None},
        "command_period_ms_node": {"p50": period[0], "p99": period[1]},
        "inference_latency_ms": {"median": lat[0], "max": lat[1]},
        "provider": d.get("provider"), "precision": d.get("precision"),
        "chunks": st.chunks, "starvation_count": st.queue.starved,
        "dropped_actions": st.queue.dropped, "node_exit_code": rc,
        "chunk_transition": st.chunk_transition, "inference_lead": st.inference_lead,
        "boundary_jump_ratio": st.boundary_jump_ratio, "chunk_switches": st.chunk_switches,
        "episode_start": "~/reset called" if reset_episodes else "discontinuity detection (no reset call)",
        "resets_called": watcher.resets, "discontinuities": st.discontinuities, "node_params": list(node_params),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dp-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="reach", help=f"the sim task: {', '.join(TASKS)} (default reach)")
    p.add_argument("--out", default=None, help="keeps everything the demo makes (a cache; default out/demo, "
                                               "out/demo-TASK for the other tasks)")
    p.add_argument("--quick", action="store_true", help="a short version of the same path (CI)")
    p.add_argument("--episodes", type=int, default=None, help="closed-loop episodes")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID of the closed loop (default: a free one)")
    p.add_argument("--remote", action="store_true", help="closed loop with backend remote: the bundle served by "
                                                          "dp-serve on this machine")
    p.add_argument("--reset-episodes", action="store_true",
                   help="call the node's ~/reset at each episode end (default: the node finds each new start itself)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="a node parameter for the closed loop (repeatable), e.g. chunk_transition:=replace")
    args = p.parse_args(argv)
    try:
        task = sim_task(args.task)
    except ConfigError as e:
        p.error(f"--task: {e}")
    plan: DemoPlan = task.quick if args.quick else task.full
    plan = replace(plan, train_steps=args.steps or plan.train_steps, episodes=args.episodes or plan.episodes)
    out = Path(args.out or task.demo_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    bag = step("demonstrations (scripted expert -> MCAP bag)", out / "demos", build_demos(plan.demos, args.seed, task))
    dataset = step("dataset (dp-dataset)", out / "dataset.npz", build_dataset(bag, task))
    ckpt = step("training (GroupNorm + EMA power 0.75)", out / "checkpoint" / "policy.safetensors",
                build_checkpoint(dataset, plan, args.seed))
    bundle = step("bundle (dp-export: ONNX + TorchScript)", out / "bundle", build_bundle(ckpt))
    report = step("replay report of one episode (dp-replay)", out / "report", build_report(bundle, out, args.seed, task))
    if args.remote:
        from ..serve.process import ServerProcess
        print("[run] dp-serve (Ray Serve) with the bundle ...", flush=True)
        with ServerProcess([bundle], out / "logs" / "dp_serve.log") as server:
            print(f"[run] closed loop over DDS, the node's chunks from {server.url} ...", flush=True)
            loop = closed_loop(bundle, out, plan.episodes, args.seed, args.domain_id, task,
                               ("backend:=remote", f"server_url:={server.url}", *args.param), args.reset_episodes)
    else:
        print("[run] closed loop over DDS ...", flush=True)
        loop = closed_loop(bundle, out, plan.episodes, args.seed, args.domain_id, task, tuple(args.param),
                           args.reset_episodes)
    demos_info = json.loads((out / "demos_info.json").read_text()) if (out / "demos_info.json").exists() else {}
    replay = json.loads((report / "metrics.json").read_text())
    summary = {"task": task.name, "backend": "remote" if args.remote else "local", "expert_success_rate": demos_info.get("expert_success_rate"), "policy": loop,
               "replay": {"mse": replay["action_mse_mean"], "mae": replay["action_mae_mean"],
                          "report": str(report)},
               "wall_s": round(time.time() - t0, 1)}
    summary_file = out / ("summary_remote.json" if args.remote else "summary.json")
    summary_file.write_text(json.dumps(summary, indent=2))
    lp = loop
    print(f"\n=== dp-demo ({task.name}: {task.doc}) ===")
    print(f"expert success rate (demonstrations): {_pct(summary['expert_success_rate'])}"
          + ("" if summary["expert_success_rate"] is not None else f" (no demos_info.json beside {out / 'demos'})"))
    print(f"policy success rate (closed loop over DDS): {lp['success_rate']:.0%} of {lp['episodes']} episodes")
    print(f"command period at 10 Hz: p50 {_fmt(lp['command_period_ms_node']['p50'])} ms, "
          f"p99 {_fmt(lp['command_period_ms_node']['p99'])} ms (node clock); received p50 "
          f"{_fmt(lp['command_period_ms_received']['p50'])} ms, p99 {_fmt(lp['command_period_ms_received']['p99'])} ms")
    print(f"inference latency: median {_fmt(lp['inference_latency_ms']['median'])} ms, "
          f"max {_fmt(lp['inference_latency_ms']['max'])} ms on {lp['provider']} ({lp['precision']})")
    print(f"starvation: {lp['starvation_count']}, dropped actions: {lp['dropped_actions']}, chunks: {lp['chunks']}")
    print(f"chunk transitions ({lp['chunk_transition']}, inference_lead {lp['inference_lead']}): boundary_jump_ratio "
          f"{_fmt(lp['boundary_jump_ratio'])} over {lp['chunk_switches']} switches inside episodes")
    print(f"episode starts: {lp['episode_start']}; discontinuities the node found: {lp['discontinuities']} "
          f"(teleports between episodes: {max(lp['episodes'] - 1, 0)})")
    print(f"replay of one expert episode: action MSE {replay['action_mse_mean']:.5f}; report in {report}")
    print(f"everything is in {out} ({summary_file.name})")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"
