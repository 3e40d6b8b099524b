"""ROS message <-> numpy conversion, in one place.

Inputs are duck-typed (rclpy messages and rosbags-deserialized messages have
the same fields), so the node and the replay share every conversion. Outputs
are built with the rclpy message classes (also used to serialize into bags).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import rotations
from ..errors import InputError, ShapeError
from ..layout import Segment
from ..pose_action import Pose, encode

ENCODING_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def stamp_to_sec(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp_fields(t: float) -> tuple[int, int]:
    sec = int(np.floor(t))
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return sec, nanosec


def _to_target(rgb_or_mono: np.ndarray, shape: Sequence[int], resize: bool, what: str) -> np.ndarray:
    """(h, w, 1|3) uint8 -> target (H, W, C); resizes only when allowed."""
    h, w, c = shape
    img = rgb_or_mono
    if img.shape[2] == 1 and c == 3:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 3 and c == 1:
        img = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().clip(0, 255)
        img = img.astype(np.uint8)[..., None]
    if img.shape[:2] != (h, w):
        if not resize:
            raise ShapeError(f"{what}: image is {img.shape[1]}x{img.shape[0]}, policy expects {w}x{h} "
                             "(set resize_images: true to resize)")
        from PIL import Image as PILImage
        pil = PILImage.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        img = np.asarray(pil.resize((w, h), PILImage.BILINEAR))
        img = img[..., None] if img.ndim == 2 else img
    return np.ascontiguousarray(img, dtype=np.uint8)


def image_to_array(msg: Any, shape: Sequence[int], resize: bool = False, what: str = "image") -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> (H, W, C) uint8 RGB/mono."""
    enc = str(msg.encoding).lower()
    if enc not in ENCODING_CHANNELS:
        raise InputError(f"{what}: unsupported encoding {msg.encoding!r}; expected one of "
                         f"{sorted(ENCODING_CHANNELS)}")
    ch = ENCODING_CHANNELS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes(),
                         dtype=np.uint8)
    if h <= 0 or w <= 0 or step < w * ch or data.size < step * h:
        raise ShapeError(f"{what}: {enc} image {w}x{h} step {step} needs {step * h} bytes "
                         f"(step >= {w * ch}), got {data.size}")
    img = data[: step * h].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if enc in ("bgr8", "bgra8"):
        img = img[..., [2, 1, 0]]
    elif enc == "rgba8":
        img = img[..., :3]
    return _to_target(img, shape, resize, what)


def compressed_to_array(msg: Any, shape: Sequence[int], resize: bool = False,
                        what: str = "image") -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png) -> (H, W, C) uint8."""
    fmt = str(msg.format).lower()
    if "jpeg" not in fmt and "jpg" not in fmt and "png" not in fmt:
        raise InputError(f"{what}: unsupported compressed format {msg.format!r}; expected jpeg or png")
    from PIL import Image as PILImage, UnidentifiedImageError
    try:
        pil = PILImage.open(io.BytesIO(bytes(msg.data)))
        pil.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{what}: cannot decode {msg.format!r} data: {e}") from e
    img = np.asarray(pil.convert("L" if shape[2] == 1 else "RGB"))
    img = img[..., None] if img.ndim == 2 else img
    return _to_target(img, shape, resize, what)


def joint_state_to_vector(msg: Any, names: Sequence[str], field: str = "position",
                          what: str = "joint_states") -> np.ndarray:
    """JointState -> (len(names),) float32 ordered by ``names``; extra joints ignored."""
    got = list(msg.name)
    values = list(getattr(msg, field))
    if len(values) != len(got):
        raise ShapeError(f"{what}: {len(got)} joint names but {len(values)} {field} values")
    index = {n: i for i, n in enumerate(got)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InputError(f"{what}: missing joint(s) {missing}; message has {got}")
    vec = np.array([values[index[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(vec)):
        bad = [n for n, v in zip(names, vec) if not np.isfinite(v)]
        raise InputError(f"{what}: non-finite {field} for joint(s) {bad}")
    return vec.astype(np.float32)


def normalize_msgtype(msgtype: str) -> str:
    """ROS 1 / early rosbag2 spelling 'sensor_msgs/Image' -> 'sensor_msgs/msg/Image' (the same type)."""
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else msgtype


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    import importlib
    pkg, _, name = normalize_msgtype(msgtype).split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def pose_vector(r: "ObsReader", position: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A measured pose -> the policy's pose vector, each segment in its representation (pose_action.encode; a
    quaternion's sign is kept continuous where the history is assembled: ObservationBuffer)."""
    if not np.all(np.isfinite(position)):
        raise InputError(f"{r.what}: non-finite position {list(position)}")
    blank = np.zeros(sum(s.size for s in r.segments))
    return encode(Pose(np.asarray(position, np.float64), matrix), r.segments, blank).astype(np.float32)


def pose_to_vector(r: "ObsReader", msg: Any) -> np.ndarray:
    """geometry_msgs/PoseStamped (in ``r.frame_id`` where one is configured) -> the policy's pose vector."""
    if r.frame_id and msg.header.frame_id != r.frame_id:
        raise InputError(f"{r.what}: pose in frame {msg.header.frame_id!r}, expected {r.frame_id!r} "
                         f"(obs.<key>.frame_id)")
    p, o = msg.pose.position, msg.pose.orientation
    matrix = rotations.quat_to_matrix(np.array([o.x, o.y, o.z, o.w], np.float64))
    return pose_vector(r, np.array([p.x, p.y, p.z], np.float64), matrix)


def fk_to_vector(r: "ObsReader", msg: Any) -> np.ndarray:
    """sensor_msgs/JointState -> the end-effector pose vector by forward kinematics of the chain's joints."""
    q = joint_state_to_vector(msg, r.kinematics.joint_names, "position", r.what)
    pose = r.kinematics.forward(q)
    return pose_vector(r, pose[:3, 3], pose[:3, :3])


def array_to_vector(msg: Any, size: int, what: str) -> np.ndarray:
    """std_msgs/Float64MultiArray or Float32MultiArray -> (size,) float32 (keypoints, object state)."""
    vec = np.asarray(msg.data, np.float64).reshape(-1)
    if vec.size != size:
        raise ShapeError(f"{what}: {vec.size} values, the policy's observation has {size}")
    if not np.all(np.isfinite(vec)):
        raise InputError(f"{what}: non-finite values at {np.flatnonzero(~np.isfinite(vec)).tolist()}")
    return vec.astype(np.float32)


@dataclass(frozen=True)
class ObsType:
    """One observation topic type (node parameter obs.<key>.type): its message and how it is read."""
    name: str
    msgtype: str
    image: bool
    stamped: bool  # timed by header.stamp; False: by receipt (std_msgs arrays have no header)
    read: Callable[["ObsReader", Any], np.ndarray]
    doc: str


OBS_TYPES: dict[str, ObsType] = {t.name: t for t in (
    ObsType("image", "sensor_msgs/msg/Image", True, True,
            lambda r, m: image_to_array(m, r.image_shape, r.resize, r.what), "camera image"),
    ObsType("compressed_image", "sensor_msgs/msg/CompressedImage", True, True,
            lambda r, m: compressed_to_array(m, r.image_shape, r.resize, r.what), "jpeg or png camera image"),
    ObsType("joint_state", "sensor_msgs/msg/JointState", False, True,
            lambda r, m: joint_state_to_vector(m, r.joint_names, r.joint_field, r.what),
            "the named joints' position (or velocity, effort)"),
    ObsType("pose", "geometry_msgs/msg/PoseStamped", False, True, pose_to_vector,
            "end-effector pose, written as the bundle's position and rotation segments say"),
    ObsType("fk", "sensor_msgs/msg/JointState", False, True, fk_to_vector,
            "end-effector pose by forward kinematics of the joint states (URDF), as the pose segments say"),
    ObsType("float64_multi_array", "std_msgs/msg/Float64MultiArray", False, False,
            lambda r, m: array_to_vector(m, r.size, r.what), "a plain vector (no header: timed on receipt)"),
    ObsType("float32_multi_array", "std_msgs/msg/Float32MultiArray", False, False,
            lambda r, m: array_to_vector(m, r.size, r.what), "a plain vector (no header: timed on receipt)"),
)}
OBS_MESSAGE_TYPES = {name: t.msgtype for name, t in OBS_TYPES.items()}


@dataclass
class ObsReader:
    """One observation topic's messages -> (stamp, value), for the node, replay and dp-dataset alike. ``kind`` is
    the obs topic type (OBS_TYPES)."""
    kind: str
    what: str  # the topic, for messages
    image_shape: Sequence[int] | None = None
    resize: bool = False
    joint_names: Sequence[str] = ()
    joint_field: str = "position"
    segments: Sequence[Segment] = ()  # pose: the observation's layout
    size: int = 0  # arrays: the observation's length
    frame_id: str = ""  # pose: the frame it must be in ("": any)
    kinematics: Any = None  # fk: kinematics.Kinematics of the chain

    def __post_init__(self) -> None:
        self.type = OBS_TYPES[self.kind]

    def __call__(self, msg: Any, received: float | None = None) -> tuple[float, np.ndarray]:
        """(stamp s, observation value); ``received``: the receipt time, the stamp of header-less types."""
        if self.type.stamped:
            stamp = stamp_to_sec(msg.header.stamp)
            if stamp == 0.0:
                raise InputError(f"{self.what}: header stamp is zero; observations are timed by their header "
                                 "stamps, so the publisher must stamp each message (header.stamp = the capture time)")
        elif not received:
            raise InputError(f"{self.what}: a {self.kind} message has no header and the node has no clock yet")
        else:
            stamp = received
        return stamp, self.type.read(self, msg)
