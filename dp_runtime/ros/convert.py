"""ROS message <-> numpy conversion, in one place.

Inputs are duck-typed (rclpy messages and rosbags-deserialized messages have
the same fields), so the node and the replay share every conversion. Outputs
are built with the rclpy message classes (also used to serialize into bags).
"""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, ShapeError

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


# obs topic type (node parameter obs.<key>.type) -> the ROS message it subscribes to
OBS_MESSAGE_TYPES = {"image": "sensor_msgs/msg/Image", "compressed_image": "sensor_msgs/msg/CompressedImage",
                     "joint_state": "sensor_msgs/msg/JointState"}


def normalize_msgtype(msgtype: str) -> str:
    """ROS 1 / early rosbag2 spelling 'sensor_msgs/Image' -> 'sensor_msgs/msg/Image' (the same type)."""
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else msgtype


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    import importlib
    pkg, _, name = normalize_msgtype(msgtype).split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def to_observation(kind: str, msg: Any, image_shape: Sequence[int] | None, joint_names: Sequence[str],
                   joint_field: str, resize: bool, what: str) -> tuple[float, np.ndarray]:
    """One subscribed message -> (header stamp s, observation value), for the node and replay alike.

    ``kind`` is the obs topic type: image | compressed_image | joint_state.
    """
    stamp = stamp_to_sec(msg.header.stamp)
    if stamp == 0.0:
        raise InputError(f"{what}: header stamp is zero; observations are timed by their header stamps, so the "
                         "publisher must stamp each message (header.stamp = the capture time)")
    if kind == "image":
        return stamp, image_to_array(msg, image_shape, resize, what=what)
    if kind == "compressed_image":
        return stamp, compressed_to_array(msg, image_shape, resize, what=what)
    return stamp, joint_state_to_vector(msg, joint_names, joint_field, what=what)
