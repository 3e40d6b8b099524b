"""dp-replay BAG --bundle BUNDLE [--config policy.yaml] [--mode offline|realtime] [--rate R] [--seed S] [--out DIR]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..ros.params import load_params_file
from ..ros.runtime import open_engine
from .bag import DISTROS, Bag
from .pipeline import ReplaySetup, replay_offline
from .report import summary, verdict, write_report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dp-replay", description="Replay a rosbag2 recording through a policy bundle "
                                "and compare its actions with the recorded commands.")
    p.add_argument("bag", help="rosbag2 directory (metadata.yaml) or a single .mcap / .db3 file")
    p.add_argument("--bundle", required=True, help="exported bundle directory")
    p.add_argument("--config", help="the node's parameter file (topics, rate, limits); default: bundle defaults")
    p.add_argument("--mode", choices=("offline", "realtime"), default="offline",
                   help="offline: no DDS, bag clock, deterministic; realtime: publish over DDS into a policy node")
    p.add_argument("--rate", type=float, default=1.0, help="realtime playback rate (1.0 = as recorded)")
    p.add_argument("--seed", type=int, default=0, help="noise seed: chunk k uses seed + k")
    p.add_argument("--out", default="replay_report", help="report directory")
    p.add_argument("--distro", default="kilted", choices=sorted(DISTROS),
                   help="typestore for types the bag does not define")
    p.add_argument("--recorded-topic", default=None,
                   help="recorded command topic to compare with (default: the config's command_topic if the "
                        "bag has it; 'none' to skip)")
    p.add_argument("--backend", default=None, help="override the config's backend")
    p.add_argument("--device", default=None, help="override the config's device")
    p.add_argument("--precision", default=None, help="override the config's precision (auto, fp32, int8, fp16, bf16)")
    p.add_argument("--assumed-latency", type=float, default=0.0,
                   help="offline: inference time assumed on the bag clock, s (deterministic)")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve_recorded_topic(arg: str | None, command_topic: str, bag: Bag) -> str | None:
    if arg == "none":
        return None
    if arg:
        return arg
    return command_topic if command_topic in bag.topics else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    params, flat = load_params_file(args.config, backend=args.backend, device=args.device, bundle=args.bundle,
                                     precision=args.precision)
    engine = open_engine(params)
    with Bag(args.bag, args.distro) as bag:  # opened once: each problem with it is reported once
        recorded = resolve_recorded_topic(args.recorded_topic, params.command_topic, bag)
        setup = ReplaySetup.create(engine, params, flat, recorded)
        if args.mode == "offline":
            result = replay_offline(bag, setup, seed=args.seed, assumed_latency_s=args.assumed_latency,
                                    progress=not args.no_progress)
        else:
            from .realtime import replay_realtime
            result = replay_realtime(bag, setup, args.config, seed=args.seed, rate=args.rate)
        out = Path(args.out)
        m = write_report(out, result, setup, args.distro, bag)
    print(summary(m, out))
    ok, lines = verdict(m)
    for line in lines:
        print(line, file=sys.stderr)
    return 0 if ok else 1
