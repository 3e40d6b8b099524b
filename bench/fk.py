"""Forward kinematics for the `fk` observation: time per JointState message and agreement between libraries.

The production path (a JointState message through the node's fk reader: joints matched by name, kinpy's
chain, the pose written as rotation_6d_rows) is timed against the 1 ms a message may cost; each kinematics
library installed (kinpy, Pinocchio `pin`, pytransform3d) is timed on the bare FK of the same random
configurations, interleaved, and their tool poses compared. Installed size beyond numpy is measured by
`pip install --target` (README, End-effector policies). JSON in results/fk.json.

    python bench/fk.py [--urdf tests/fixtures/arm6.urdf] [--tip tool0] [--n 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from dp_runtime import layout
from dp_runtime.kinematics import Kinematics
from dp_runtime.ros.convert import ObsReader

HERE = Path(__file__).resolve().parent


def libraries(urdf: str, tip: str, joints: list[str]) -> dict:
    """name -> q -> (4, 4), for each library importable here."""
    out = {}
    kin = Kinematics(urdf, tip)
    out["kinpy"] = kin.forward
    try:
        import pinocchio as pin
        model = pin.buildModelFromXML(urdf)
        data = model.createData()
        frame = model.getFrameId(tip)
        idx = [model.joints[model.getJointId(j)].idx_q for j in joints]

        def f_pin(q):
            full = pin.neutral(model)
            full[idx] = q
            pin.framesForwardKinematics(model, data, full)
            return data.oMf[frame].homogeneous.copy()
        out["pin"] = f_pin
    except ImportError:
        pass
    try:
        from pytransform3d.urdf import UrdfTransformManager
        tm = UrdfTransformManager()
        tm.load_urdf(urdf)
        import xml.etree.ElementTree as ET
        robot = ET.fromstring(urdf)
        children = {j.find("child").get("link") for j in robot.iter("joint")}
        base = next(link.get("name") for link in robot.iter("link") if link.get("name") not in children)

        def f_pt(q):
            for j, v in zip(joints, q):
                tm.set_joint(j, v)
            return tm.get_transform(tip, base)
        out["pytransform3d"] = f_pt
    except ImportError:
        pass
    return out


def cpu() -> dict:
    """The machine the timings come from: cores and the vector extensions its FK libraries may use."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "machine": platform.machine(),
            "features": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urdf", default=str(HERE.parent / "tests" / "fixtures" / "arm6.urdf"))
    ap.add_argument("--tip", default="tool0")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fk.json")
    args = ap.parse_args()
    from sensor_msgs.msg import JointState
    urdf = Path(args.urdf).read_text()
    kin = Kinematics(urdf, args.tip)
    joints = kin.joint_names
    q = np.random.default_rng(0).uniform(-3, 3, size=(args.n, len(joints)))
    segs = layout.parse([{"kind": "position"}, {"kind": "rotation", "representation": "rotation_6d_rows"}], 9, "eef")
    read = ObsReader("fk", "/joint_states", segments=segs, size=9, kinematics=kin)
    msgs = []
    for row in q:
        m = JointState(name=joints[::-1] + ["finger_joint"], position=[float(v) for v in row[::-1]] + [0.0])
        m.header.stamp.sec = 1
        msgs.append(m)
    libs = libraries(urdf, args.tip, joints)
    timings = {name: [] for name in ["message (fk reader, kinpy)", *libs]}
    poses = {name: [] for name in libs}
    for i in range(args.n):  # interleaved: every entry sees the same machine state
        t = time.perf_counter()
        read(msgs[i])
        timings["message (fk reader, kinpy)"].append(time.perf_counter() - t)
        for name, f in libs.items():
            t = time.perf_counter()
            pose = f(q[i])
            timings[name].append(time.perf_counter() - t)
            poses[name].append(np.asarray(pose))
    rows = {name: {"median_us": float(np.median(v) * 1e6), "p99_us": float(np.percentile(v, 99) * 1e6)}
            for name, v in timings.items()}
    names = list(libs)
    agreement = {f"{a} vs {b}": float(np.abs(np.array(poses[a]) - np.array(poses[b])).max())
                 for i, a in enumerate(names) for b in names[i + 1:]}
    print(f"{len(joints)}-joint chain to {args.tip}, {args.n} configurations, {platform.processor() or platform.machine()}")
    for name, r in rows.items():
        print(f"  {name:<28} median {r['median_us']:8.1f} us  p99 {r['p99_us']:8.1f} us  "
              f"({r['median_us'] / 1000:.3f} of the 1 ms budget)")
    for pair, d in agreement.items():
        print(f"  {pair:<28} max |pose difference| {d:.1e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"urdf": Path(args.urdf).name, "tip": args.tip, "joints": joints, "n": args.n,
                                    "timings": rows, "agreement": agreement, "cpu": cpu()}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
