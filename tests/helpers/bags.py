"""Real rosbag2 files for replay tests, written with rosbags (MCAP or sqlite3)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from helpers.synthetic import render_dot

T0 = 1_700_000_000.0
SIZE = 24


def target_at(t: float) -> np.ndarray:
    """A target that drifts slowly, so observations change over the bag."""
    return np.array([0.5 * np.cos(0.3 * t), 0.5 * np.sin(0.3 * t)])


def write_test_bag(path: Path, storage: str = "mcap", seconds: float = 4.0, camera_hz: float = 20.0,
                   joint_hz: float = 50.0, compressed: bool = False, store=Stores.ROS2_KILTED,
                   lag: float = 0.01, constant: bool = False, extra_unknown: bool = False,
                   shuffle_stamps: bool = False, corrupt_every: int = 0, command_topic: str = "/commands",
                   version: int = 8, filler: bool = False, size: int = SIZE, zero_stamps: bool = False) -> Path:
    """Camera (/camera/image_raw or .../compressed), /joint_states and recorded /commands.

    Header stamps are ``lag`` s before the bag (receive) time, as on a real robot.
    """
    ts = get_typestore(store)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

    def header(t):
        if zero_stamps:  # a publisher that never stamps its messages
            return Header(stamp=Time(sec=0, nanosec=0), frame_id="")
        return Header(stamp=Time(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)) % 1_000_000_000), frame_id="")

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    events = []  # (bag time, topic, message or raw bytes)
    for i in range(int(seconds * camera_hz)):
        t = T0 + i / camera_hz
        tgt = np.array([0.4, -0.3]) if constant else target_at(t - T0)
        img = render_dot(tgt, size)
        if compressed:
            from PIL import Image as PILImage
            buf = io.BytesIO()
            PILImage.fromarray(img).save(buf, format="PNG")
            msg = T["sensor_msgs/msg/CompressedImage"](header=header(t - lag), format="png",
                                                       data=np.frombuffer(buf.getvalue(), np.uint8))
            events.append((t, "/camera/image_raw/compressed", msg))
        else:
            msg = T["sensor_msgs/msg/Image"](header=header(t - lag), height=size, width=size, encoding="rgb8",
                                             is_bigendian=0, step=size * 3, data=img.reshape(-1))
            events.append((t, "/camera/image_raw", msg))
        if filler:  # an unused 128x128 camera, so the MCAP file spans several 1 MiB chunks
            events.append((t, "/camera2/image_raw", T["sensor_msgs/msg/Image"](
                header=header(t), height=128, width=128, encoding="rgb8", is_bigendian=0, step=384,
                data=np.full(128 * 128 * 3, i % 251, np.uint8))))
    for i in range(int(seconds * joint_hz)):
        t = T0 + i / joint_hz
        q = np.array([0.1, -0.2]) if constant else 0.3 * np.array([np.sin(t - T0), np.cos(t - T0)])
        stamp = t - lag
        if shuffle_stamps and i % 10 == 5:
            stamp -= 0.5  # out-of-order header stamp
        js = T["sensor_msgs/msg/JointState"](header=header(stamp), name=["joint1", "joint2", "gripper"],
                                             position=np.array([q[0], q[1], 0.0]), velocity=np.zeros(0),
                                             effort=np.zeros(0))
        events.append((t, "/joint_states", js))
        if i % 5 == 0:
            events.append((t + 0.001, command_topic,
                           T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](
                               dim=[], data_offset=0), data=q + 0.05)))
    events.sort(key=lambda e: e[0])
    with Writer(path, version=version, storage_plugin=plugin) as w:
        conns = {}
        types = {"/camera/image_raw": "sensor_msgs/msg/Image",
                 "/camera/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
                 "/joint_states": "sensor_msgs/msg/JointState", command_topic: "std_msgs/msg/Float64MultiArray",
                 "/camera2/image_raw": "sensor_msgs/msg/Image"}
        n = 0
        for t, topic, msg in events:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, types[topic], typestore=ts)
            raw = ts.serialize_cdr(msg, types[topic])
            if corrupt_every and topic == "/joint_states" and n % corrupt_every == corrupt_every - 1:
                raw = raw[:12]  # cut short: not decodable
            n += 1
            w.write(conns[topic], int(t * 1e9), raw)
        if extra_unknown:
            # A vendor type recorded without its definition (as with a bag from a custom stack).
            c = w.add_connection("/vendor/status", "vendor_msgs/msg/Status", msgdef="", rihs01="RIHS01_" + "0" * 64)
            w.write(c, int(T0 * 1e9) + 5, b"\x00\x01\x00\x00\x07\x00\x00\x00")
    return path
