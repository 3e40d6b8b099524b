"""Load on dp-serve: N simulated robots, each requesting a chunk every control period with real observations.

Starts a real dp-serve (Ray Serve) on this machine with the bundle, then for each fleet size runs N
robot threads, each with its own remote engine (own connection, own seeds) requesting at --rate Hz
for --seconds with camera frames and joint states from the demo's dataset. Per level: per-robot
round trip p50/p99, late replies (round trip over one control period), chunks/s served, the batch
sizes Serve formed (from the server's record), machine CPU use, and the round trip against the local
chunk latency measured in the same run (the bundle in this process, before and after every level).
JSON next to this file.

    python bench/serve.py [--bundle out/demo/bundle] [--levels 1@10,4@10,16@10,16@1.25,64@1.25] [--seconds 20]

A level ``N@R`` is N robots requesting R chunks/s each: 10 is a new chunk every control period at
10 Hz (the issue's load), 1.25 what a node with 8-action chunks at 10 Hz actually requests. The
compute capacity of this machine (chunks/s of ``predict_batch`` in this process at batch 1, 4, 16)
is measured first: no server serves more than that.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from dp_runtime.engine import load_bundle
from dp_runtime.engine.remote import RemoteEngine
from dp_runtime.errors import ServerError
from dp_runtime.serve.process import ServerProcess

HERE = Path(__file__).resolve().parent


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (/proc/stat): the host's CPU use, server and robots alike."""
    v = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def observations(dataset: Path, keys: list[str], n: int, rng) -> list[dict[str, np.ndarray]]:
    with np.load(dataset) as d:
        arrays = {k: d[k] for k in keys}  # each read decompresses the whole array: once per key
    idx = rng.choice(len(arrays[keys[0]]), n)
    return [{k: np.ascontiguousarray(arrays[k][i]) for k in keys} for i in idx]


def local_ms(engine, obs, repeats: int = 15) -> float:
    engine.predict(obs[0], seed=0)
    times = [engine.predict(obs[i % len(obs)], seed=i).latency_s for i in range(repeats)]
    return float(np.median(times) * 1e3)


def run_level(url: str, bundle: str, robots: int, seconds: float, rate: float, obs, timeout_s: float) -> dict:
    engines = [RemoteEngine(bundle, url, timeout_s=timeout_s, warm_up=False) for _ in range(robots)]
    rtts: list[list[float]] = [[] for _ in range(robots)]
    computes: list[list[float]] = [[] for _ in range(robots)]  # the server's compute time of each reply, ms
    failures = [0] * robots
    start = time.monotonic() + 0.5
    phases = np.random.default_rng(robots).uniform(0, 1, robots)  # the same draw for every run of a level
    stop_at = start + seconds

    def robot(i: int) -> None:
        period = 1.0 / rate
        due = start + phases[i] * period  # robots' control clocks run independently: random phases
        k = 0
        while due < stop_at:
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                rtts[i].append(engines[i].predict(obs[(i * 7 + k) % len(obs)], seed=i * 100_000 + k).latency_s)
                computes[i].append(engines[i].last_server_ms)
            except ServerError:
                failures[i] += 1
            k += 1
            due += period
            while due < time.monotonic():  # a reply later than a period: that request slot is gone
                due += period

    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(robots)]
    busy0, total0 = cpu_busy()
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    busy1, total1 = cpu_busy()
    all_rtt = np.concatenate([np.array(r) for r in rtts if r]) * 1e3
    transport = all_rtt - np.concatenate([np.array(c) for c in computes if c])
    per_robot_p99 = [float(np.percentile(np.array(r) * 1e3, 99)) for r in rtts if r]
    wanted = robots * seconds * rate
    return {"robots": robots, "requests_wanted": wanted, "chunks": int(all_rtt.size), "failures": int(sum(failures)),
            "chunks_per_s": all_rtt.size / wall, "rtt_ms_p50": float(np.percentile(all_rtt, 50)),
            "rtt_ms_p99": float(np.percentile(all_rtt, 99)),
            "transport_ms_p50": float(np.percentile(transport, 50)), "transport_ms_p99": float(np.percentile(transport, 99)),
            "worst_robot_p99_ms": max(per_robot_p99),
            "late_share": float(np.mean(all_rtt > 1e3 / rate)), "wall_s": wall, "cpu_busy": (busy1 - busy0) / (total1 - total0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="out/demo/bundle")
    ap.add_argument("--dataset", default=None, help="observations to send (default: the bundle's dp-demo dataset)")
    ap.add_argument("--levels", default="1@10,4@10,16@10,16@1.25,64@1.25", help="ROBOTS@REQUESTS_PER_S, ...")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=0, help="server inference threads (0: backend default)")
    ap.add_argument("--timeout", type=float, default=2.0, help="client deadline per request, s")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_cpu.json")
    args = ap.parse_args()
    bundle = str(Path(args.bundle).resolve())
    dataset = Path(args.dataset) if args.dataset else Path(args.bundle).parent / "dataset.npz"
    local = load_bundle(bundle, backend="onnxruntime")
    obs = observations(dataset, list(local.keys), 256, np.random.default_rng(0))
    log = Path("out/bench_serve/dp_serve.log")
    srv = ServerProcess([bundle], log, args=("--max-batch", str(args.max_batch), "--batch-wait-ms",
                                             str(args.batch_wait_ms), "--threads", str(args.threads)))
    capacity = {}
    for b in (1, 4, 16):
        batch = [obs[i] for i in range(b)]
        local.predict_batch(batch, list(range(b)))
        t0 = time.perf_counter()
        for _ in range(3):
            local.predict_batch(batch, list(range(b)))
        capacity[b] = 3 * b / (time.perf_counter() - t0)
    print("compute capacity here (predict_batch in-process): " +
          ", ".join(f"batch {b}: {c:.0f} chunks/s" for b, c in capacity.items()), flush=True)
    rows = []
    with srv:
        RemoteEngine(bundle, srv.url, timeout_s=10.0)  # warm the replica
        for level in args.levels.split(","):
            robots, rate = int(level.split("@")[0]), float(level.split("@")[1])
            before_local = local_ms(local, obs)
            health0 = srv.health()
            batches0 = {int(k): v for k, v in health0["batch_sizes"].items()}
            row = run_level(srv.url, bundle, robots, args.seconds, rate, obs, args.timeout)
            row["rate_hz"] = rate
            health1 = srv.health()
            batches1 = {int(k): v for k, v in health1["batch_sizes"].items()}
            row["replica_busy"] = (health1["compute_s"] - health0["compute_s"]) / row["wall_s"]
            formed = {k: batches1.get(k, 0) - batches0.get(k, 0) for k in batches1 if batches1.get(k, 0) > batches0.get(k, 0)}
            calls = sum(formed.values())
            row["batches_formed"] = formed
            row["mean_batch"] = sum(k * n for k, n in formed.items()) / calls if calls else 0.0
            row["max_batch"] = max(formed) if formed else 0
            row["local_chunk_ms"] = float(np.median([before_local, local_ms(local, obs)]))
            row["p99_over_local"] = row["rtt_ms_p99"] / row["local_chunk_ms"]
            rows.append(row)
            print(f"{robots:>3} robots x {rate:g} chunks/s: {row['chunks_per_s']:6.1f} chunks/s, round trip p50 "
                  f"{row['rtt_ms_p50']:6.1f} / p99 {row['rtt_ms_p99']:6.1f} ms (worst robot p99 "
                  f"{row['worst_robot_p99_ms']:6.1f}; not compute: p50 {row['transport_ms_p50']:5.1f} / p99 "
                  f"{row['transport_ms_p99']:5.1f}), {100 * row['late_share']:4.1f} % late, {row['failures']} "
                  f"failed, mean batch {row['mean_batch']:4.1f} (max {row['max_batch']}), CPU "
                  f"{100 * row['cpu_busy']:3.0f} % (replica computing {100 * row['replica_busy']:3.0f} %), local chunk {row['local_chunk_ms']:5.1f} ms -> p99 "
                  f"{row['p99_over_local']:.1f}x", flush=True)
    print("\n| robots x requests/s | chunks/s served | round trip p50 / p99 | not compute p50 / p99 | late (> one "
          "request period) | mean batch (max) | CPU busy | replica computing | p99 / local chunk |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['robots']} x {r['rate_hz']:g} | {r['chunks_per_s']:.0f} | {r['rtt_ms_p50']:.1f} / {r['rtt_ms_p99']:.1f} ms | "
              f"{r['transport_ms_p50']:.1f} / {r['transport_ms_p99']:.1f} ms | {100 * r['late_share']:.1f} % | "
              f"{r['mean_batch']:.1f} ({r['max_batch']}) | {100 * r['cpu_busy']:.0f} % | {100 * r['replica_busy']:.0f} % | "
              f"{r['p99_over_local']:.1f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundle": args.bundle, "seconds": args.seconds, "capacity_chunks_per_s": capacity,
                                    "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                                    "cpus": os.cpu_count(), "machine": platform.machine(), "rows": rows}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
