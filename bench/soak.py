"""Soak: policy_node under sustained sensor load, as on a robot computer. Prints what the robot gets.

A 96x96 camera at 30 Hz and joint_states at 100 Hz from a second process, commands at 50 Hz, a
demo-size policy (random weights: timing only), for --minutes. Reports the command rate achieved
(as received by a third party), period p50/p99 and gaps, starvation, the node's CPU share and its
RSS slope after warm-up (a bounded node is flat). --checkout runs the node (and exports the bundle)
from another source tree, for before/after figures on the same machine.

    python bench/soak.py [--minutes 5] [--checkout DIR] [--out bench/results/soak.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATE, CAMERA_HZ, JOINTS_HZ, SIZE = 50.0, 30.0, 100.0, 96
EXPORT = """
import sys
from dp_runtime.checkpoint import save_checkpoint
from dp_runtime.export import ExportOptions, export_bundle
from dp_runtime.model import DiffusionPolicy, EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig
cfg = PolicyConfig(images=[ImageSpec("camera", (96, 96, 3), topic="/camera/image_raw")],
                   low_dims=[LowDimSpec("state", 2, topic="/joint_states", names=["shoulder", "elbow"])],
                   action_dim=2, action_names=["shoulder", "elbow"], horizon=16, n_obs_steps=2, n_action_steps=8,
                   num_inference_steps=16,
                   encoder=EncoderConfig(base_width=8, pool="spatial_softmax", num_kp=32, feature_dim=64),
                   unet=UnetConfig(down_dims=(32, 64, 128), kernel_size=5, n_groups=8, diffusion_step_embed_dim=64))
p = DiffusionPolicy(cfg)
ck = save_checkpoint(sys.argv[1] + "/policy.safetensors", p, p, {"note": "random weights"})
export_bundle(ck, sys.argv[1] + "/bundle", ExportOptions(formats=("onnx",), parity_samples=1))
"""


def publisher(duration: float) -> None:
    """Camera at 30 Hz and joint_states at 100 Hz, header-stamped, on one timer grid."""
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    rclpy.init()
    node = rclpy.create_node("soak_sensors")
    cam = node.create_publisher(Image, "/camera/image_raw", QoSProfile(
        reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=5))
    js = node.create_publisher(JointState, "/joint_states", 10)
    img = (np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3))).astype(np.uint8).tobytes()
    start, k = time.time(), 0
    print("publishing", flush=True)
    while time.time() - start < duration:
        now = time.time()
        sec, nsec = int(now), int((now - int(now)) * 1e9)
        msg = JointState(name=["shoulder", "elbow"], position=[0.1 * np.sin(now), 0.2])
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
        js.publish(msg)
        if k % round(JOINTS_HZ / CAMERA_HZ) == 0:
            im = Image(height=SIZE, width=SIZE, encoding="rgb8", step=SIZE * 3, data=img)
            im.header.stamp.sec, im.header.stamp.nanosec = sec, nsec
            cam.publish(im)
        k += 1
        time.sleep(max(0.0, start + k / JOINTS_HZ - time.time()))
    node.destroy_node()
    rclpy.shutdown()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def soak(minutes: float, checkout: Path | None, domain: int, extra: list[str]) -> dict:
    sys.path.insert(0, str(HERE.parent))
    from dp_runtime.ros.process import stop_process
    from dp_runtime.ros.side_node import SideNode
    from std_msgs.msg import Float64MultiArray
    from diagnostic_msgs.msg import DiagnosticArray
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
    if checkout:
        env["PYTHONPATH"] = str(checkout)
    work = Path(tempfile.mkdtemp(prefix="dp_soak_"))
    cwd = str(checkout or HERE.parent)  # `python -m`/`-c` put the working directory first on sys.path
    subprocess.run([sys.executable, "-c", EXPORT, str(work)], env=env, check=True, capture_output=True, cwd=cwd)
    params = work / "params.yaml"
    params.write_text(f"""policy_node:
  ros__parameters:
    bundle: {work / 'bundle'}
    control_rate_hz: {RATE}
    command_topic: /soak/commands
    max_obs_age: 0.5
    diagnostics_period: 1.0
""" + "".join(f"    {kv.split('=', 1)[0]}: {kv.split('=', 1)[1]}\n" for kv in extra))
    side = SideNode("soak_watch", domain)
    arrivals: list[float] = []
    diag: dict[str, str] = {}
    side.node.create_subscription(Float64MultiArray, "/soak/commands", lambda m: arrivals.append(time.perf_counter()),
                                  100)

    def on_diag(msg) -> None:
        diag.update({kv.key: kv.value for kv in msg.status[0].values})
    side.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    node = subprocess.Popen([sys.executable, "-m", "dp_runtime.ros.node", "--ros-args", "--params-file", str(params)],
                            env=env, stdout=open(work / "node.log", "w"), stderr=subprocess.STDOUT, cwd=cwd)
    seconds = minutes * 60
    pub = subprocess.Popen([sys.executable, __file__, "--publisher", str(seconds + 30)], env=env,
                           stdout=subprocess.DEVNULL, stderr=open(work / "pub.log", "w"))
    rss: list[tuple[float, float]] = []
    try:
        deadline = time.time() + 120
        while "provider" not in (work / "node.log").read_text():
            if node.poll() is not None or time.time() > deadline:
                raise RuntimeError((work / "node.log").read_text()[-2000:])
            time.sleep(0.2)
        time.sleep(10)  # discovery and warm-up
        t0, cpu0, n0 = time.time(), cpu_s(node.pid), len(arrivals)
        starved0 = int(diag.get("starvation_count", 0))
        while time.time() - t0 < seconds:
            time.sleep(5)
            rss.append((time.time() - t0, rss_mb(node.pid)))
        wall, cpu1, n1 = time.time() - t0, cpu_s(node.pid), len(arrivals)
        starved = int(diag.get("starvation_count", 0)) - starved0
    finally:
        stop_process(pub)
        rc = stop_process(node)
        side.close()
    times = np.array(arrivals[n0:n1])
    periods = np.diff(times) * 1e3
    r = np.array(rss)
    warm = r[:, 0] > 60
    slope = float(np.polyfit(r[warm, 0] / 60, r[warm, 1], 1)[0]) if warm.sum() > 3 else float("nan")
    return {"minutes": minutes, "checkout": str(checkout or HERE.parent), "node_exit_code": rc,
            "command_rate_hz": (n1 - n0) / wall, "target_rate_hz": RATE,
            "period_ms_p50": float(np.percentile(periods, 50)) if periods.size else None,
            "period_ms_p99": float(np.percentile(periods, 99)) if periods.size else None,
            "gaps_over_2_periods_pct": float(100 * np.mean(periods > 2000 / RATE)) if periods.size else None,
            "starvation": starved, "node_cpu_share": (cpu1 - cpu0) / wall,
            "rss_mb_start": float(r[0, 1]), "rss_mb_end": float(r[-1, 1]), "rss_slope_mb_per_min": slope,
            "inference_ms_median": diag.get("inference_latency_ms_median"),
            "node_period_ms_p99": diag.get("command_period_ms_p99"), "params": extra,
            "inference_lead": diag.get("inference_lead")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--checkout", type=Path, default=None, help="run the node from this source tree instead")
    ap.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "0")) or 91)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    ap.add_argument("--label", default="current")
    ap.add_argument("--param", action="append", default=[], help="extra node parameter NAME=VALUE (repeatable)")
    ap.add_argument("--publisher", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publisher is not None:
        publisher(args.publisher)
        return
    r = soak(args.minutes, args.checkout, args.domain, args.param)
    print(f"\nsoak {args.label}: {r['minutes']:g} min, camera {SIZE}x{SIZE} @ {CAMERA_HZ:g} Hz, joint_states @ "
          f"{JOINTS_HZ:g} Hz, commands @ {RATE:g} Hz")
    if r["period_ms_p50"] is not None:
        print(f"  command rate {r['command_rate_hz']:.1f} Hz of {RATE:g} ({100 * r['command_rate_hz'] / RATE:.1f} %), "
              f"period p50 {r['period_ms_p50']:.2f} ms, p99 {r['period_ms_p99']:.2f} ms, gaps > 2 periods "
              f"{r['gaps_over_2_periods_pct']:.2f} %")
    print(f"  starvation {r['starvation']}, node CPU {100 * r['node_cpu_share']:.0f} % of a core, inference median "
          f"{r['inference_ms_median']} ms")
    print(f"  RSS {r['rss_mb_start']:.0f} -> {r['rss_mb_end']:.0f} MB, slope after warm-up "
          f"{r['rss_slope_mb_per_min']:.3f} MB/min; node exit code {r['node_exit_code']}")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.label] = r
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"  written to {args.out} [{args.label}]")


if __name__ == "__main__":
    main()
