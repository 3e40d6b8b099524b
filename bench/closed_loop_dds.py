"""Closed loop over real DDS (dp-sim + policy_node, two processes), per task and node settings.

What dp-demo runs, repeated for several settings with the task's cached dp-demo bundle: 20 episodes
each by default, counted from the sim's own record; with or without the node's ~/reset called at each
episode end (``+reset`` after a setting's name). The in-process benches (bench/transitions.py) reset the
runner per episode; this is the deployment's view. JSON in results/closed_loop_dds.json (appended per
run, keyed by task and setting); the node's and the sim's logs in out/demo-TASK/dds/SETTING/logs/.

    python bench/closed_loop_dds.py --task around --settings defaults,replace,soft_inpaint,defaults+reset
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dp_runtime.sim.demo import closed_loop
from dp_runtime.sim.tasks import TASKS, sim_task

HERE = Path(__file__).resolve().parent
# Named node settings (NAME:=VALUE); "defaults" is the node's documented defaults.
SETTINGS = {
    "defaults": (),
    "replace": ("chunk_transition:=replace", "chunk_noise:=fresh"),
    "soft_inpaint": ("chunk_transition:=soft_inpaint", "chunk_noise:=fresh", "inpaint_decay:=0.8"),
    "soft_inpaint_aligned": ("chunk_transition:=soft_inpaint", "chunk_noise:=aligned", "inpaint_decay:=0.8"),
    "early_0.6": ("chunk_transition:=soft_inpaint_early", "chunk_noise:=aligned", "inpaint_decay:=0.6"),
    "early_0.8": ("chunk_transition:=soft_inpaint_early", "chunk_noise:=aligned", "inpaint_decay:=0.8"),
    "early_0.85": ("chunk_transition:=soft_inpaint_early", "chunk_noise:=aligned", "inpaint_decay:=0.85"),
    "early_0.9": ("chunk_transition:=soft_inpaint_early", "chunk_noise:=aligned", "inpaint_decay:=0.9"),
    "soft_inpaint_no_detection": ("chunk_transition:=soft_inpaint", "chunk_noise:=fresh", "inpaint_decay:=0.8",
                                  "discontinuity_threshold:=1000000000.0", "discontinuity_speed:=1000000000.0"),
    "replace_no_detection": ("chunk_transition:=replace", "chunk_noise:=fresh",
                             "discontinuity_threshold:=1000000000.0", "discontinuity_speed:=1000000000.0"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="reach", choices=tuple(TASKS))
    ap.add_argument("--settings", default="defaults", help=f"comma-separated, from {', '.join(SETTINGS)} (+reset)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "closed_loop_dds.json")
    args = ap.parse_args()
    task = sim_task(args.task)
    bundle = Path(task.demo_dir) / "bundle"
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.settings.split(","):
        base, _, reset = name.partition("+")
        t0 = time.time()
        logs = Path(task.demo_dir) / "dds" / name  # the node's and the sim's logs of this run
        logs.mkdir(parents=True, exist_ok=True)
        r = closed_loop(bundle, logs, args.episodes, args.seed, task=task, node_params=SETTINGS[base],
                        reset_episodes=reset == "reset")
        episodes = r.pop("episode_results", [])
        values = [e[task.error] for e in episodes if e.get(task.error) is not None]
        r[task.error] = sum(values) / len(values) if values else None
        r["wall_s"] = round(time.time() - t0, 1)
        results[f"{task.name}/{name}"] = r
        print(f"{task.name:<7} {name:<28} success {100 * r['success_rate']:5.1f} % of {r['episodes']}  "
              f"{r['chunk_transition']:<18} jump ratio {r['boundary_jump_ratio']} over {r['chunk_switches']}  "
              f"{task.error} {r[task.error]}  discontinuities {r['discontinuities']}  "
              f"starved {r['starvation_count']}  period p99 "
              f"{r['command_period_ms_node']['p99']} ms  latency {r['inference_latency_ms']['median']} ms",
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
