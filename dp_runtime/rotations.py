"""Rotation representations: one table, every conversion through the rotation matrix (numpy only).

Frameworks disagree on how a rotation is written down, and a mix-up is silent: it twists the hand.
Each representation here is one table entry (its size and its two conversions to and from the 3x3
matrix); importers, observation conversion, command builders and limits look a name up once and
never branch on it. Matrices act on column vectors and map the rotated frame into the reference
frame, as in ROS, scipy, robosuite and pytorch3d.

- ``quat_xyzw``: ROS geometry_msgs, scipy, robosuite; ``quat_wxyz``: pytorch3d, MuJoCo. Written with
  w >= 0; read normalized (a zero or non-finite quaternion is refused).
- ``axis_angle``: rotation vector (axis * angle, radians): UR's TCP pose, LeRobot's ``ee.w*``,
  robomimic's OSC deltas. Converted through the quaternion, so angles near pi keep full precision.
- ``rotation_6d_rows``: the first two ROWS of the matrix, pytorch3d's ``matrix_to_rotation_6d``, used by
  diffusion_policy's RotationTransformer, robomimic and UMI; ``rotation_6d_cols``: the first two
  COLUMNS (Zhou et al.'s paper, pytransform3d). Read by Gram-Schmidt, so a network's output that is
  not quite orthonormal still gives a rotation.
- ``euler_<axes>``: three angles about the named axes, scipy's convention: upper case intrinsic
  (``euler_XYZ`` = Rx(a) Ry(b) Rz(c), pytorch3d's ``"XYZ"``), lower case extrinsic (``euler_xyz``).
- ``matrix``: the 9 entries, row-major.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Callable

import numpy as np

from .errors import ConfigError, InputError

_EPS = 1e-12


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


# -- quaternions (x, y, z, w) ------------------------------------------------------------------------------
def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) xyzw -> (..., 3, 3); normalized first. A zero or non-finite quaternion is an InputError."""
    q = np.asarray(q, np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(n < 1e-6):
        raise InputError(f"quaternion {np.asarray(q).tolist() if q.size <= 8 else '...'} is zero or not finite; "
                         "expected a unit quaternion")
    x, y, z, w = np.moveaxis(q / n, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) xyzw with w >= 0 (Shepperd's method: the largest diagonal term decides)."""
    m = np.asarray(m, np.float64)
    t = np.stack([m[..., 0, 0], m[..., 1, 1], m[..., 2, 2], m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]], -1)
    k = np.argmax(t, axis=-1)
    q = np.empty(m.shape[:-2] + (4,))
    # trace largest: w first
    q_w = np.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1],
                    1 + t[..., 3]], -1)
    q_x = np.stack([1 + 2 * m[..., 0, 0] - t[..., 3], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0],
                    m[..., 2, 1] - m[..., 1, 2]], -1)
    q_y = np.stack([m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - t[..., 3], m[..., 1, 2] + m[..., 2, 1],
                    m[..., 0, 2] - m[..., 2, 0]], -1)
    q_z = np.stack([m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - t[..., 3],
                    m[..., 1, 0] - m[..., 0, 1]], -1)
    q = np.where((k == 3)[..., None], q_w, np.where((k == 0)[..., None], q_x,
                                                     np.where((k == 1)[..., None], q_y, q_z)))
    q = _normalize(q)
    return np.where(q[..., 3:] < 0, -q, q)


def hemisphere(q: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """``q`` or ``-q`` (the same rotation), whichever is nearer ``previous``: a quaternion stream without
    sign flips from sample to sample (a network trained on continuous values sees no jump)."""
    if previous is None:
        return q
    return np.where(np.sum(q * previous, axis=-1, keepdims=True) < 0, -q, q)


def slerp(q0: np.ndarray, q1: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Spherical interpolation of xyzw quaternions along the shorter arc (never linear in rotation vectors)."""
    q0, q1 = _normalize(np.asarray(q0, np.float64)), _normalize(np.asarray(q1, np.float64))
    d = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1, d = np.where(d < 0, -q1, q1), np.abs(d)
    t = np.asarray(t, np.float64)[..., None] if np.ndim(t) else t
    theta = np.arccos(np.clip(d, -1.0, 1.0))
    s = np.sin(theta)
    near = s < 1e-9
    w0 = np.where(near, 1 - t, np.sin((1 - t) * theta) / np.where(near, 1, s))
    w1 = np.where(near, t, np.sin(t * theta) / np.where(near, 1, s))
    return _normalize(w0 * q0 + w1 * q1)


# -- rotation vectors ----------------------------------------------------------------------------------------
def axis_angle_to_quat(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    small = angle < 1e-6
    half_sinc = np.where(small, 0.5 - angle ** 2 / 48, np.sin(angle / 2) / np.where(small, 1, angle))
    return np.concatenate([v * half_sinc, np.cos(angle / 2)], -1)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """xyzw (w >= 0 gives angles in [0, pi]) -> rotation vector; exact near 0 and near pi."""
    q = _normalize(np.asarray(q, np.float64))
    q = np.where(q[..., 3:] < 0, -q, q)
    n = np.linalg.norm(q[..., :3], axis=-1, keepdims=True)
    angle = 2 * np.arctan2(n, q[..., 3:])
    small = n < 1e-9
    scale = np.where(small, 2 / np.maximum(q[..., 3:], _EPS), angle / np.where(small, 1, n))
    return q[..., :3] * scale


# -- 6-D (Zhou et al.) -------------------------------------------------------------------------------------
def _gram_schmidt(d6: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1)
    return b1, b2, np.cross(b1, b2)


def rot6d_rows_to_matrix(d6: np.ndarray) -> np.ndarray:
    return np.stack(_gram_schmidt(np.asarray(d6, np.float64)), axis=-2)


def matrix_to_rot6d_rows(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return m[..., :2, :].reshape(m.shape[:-2] + (6,))


def rot6d_cols_to_matrix(d6: np.ndarray) -> np.ndarray:
    return np.stack(_gram_schmidt(np.asarray(d6, np.float64)), axis=-1)


def matrix_to_rot6d_cols(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], -1)


# -- Euler angles ----------------------------------------------------------------------------------------------
def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m[..., axis, axis] = 1
    m[..., i, i], m[..., i, j], m[..., j, i], m[..., j, j] = c, -s, s, c
    return m


def _euler(axes: str) -> tuple[Callable, Callable]:
    """Tait-Bryan angles about ``axes`` (three distinct of xyz): upper case intrinsic, lower case extrinsic."""
    intrinsic = axes.isupper()
    order = ["xyz".index(a) for a in axes.lower()]
    if not intrinsic:  # extrinsic abc = intrinsic CBA with the angles reversed
        order = order[::-1]
    i, j, k = order
    sign = 1.0 if (j - i) % 3 == 1 else -1.0  # cyclic order (xyz, yzx, zxy) or not

    def to_matrix(e: np.ndarray) -> np.ndarray:
        e = np.asarray(e, np.float64)
        angles = e if intrinsic else e[..., ::-1]
        return (_axis_rotation(i, angles[..., 0]) @ _axis_rotation(j, angles[..., 1])
                @ _axis_rotation(k, angles[..., 2]))

    def from_matrix(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, np.float64)
        b = np.arcsin(np.clip(sign * m[..., i, k], -1.0, 1.0))
        locked = np.abs(m[..., i, k]) > 1 - 1e-9  # gimbal lock: only a + c (or a - c) is defined; c = 0
        a = np.where(locked, np.arctan2(sign * m[..., k, j], m[..., j, j]),
                     np.arctan2(-sign * m[..., j, k], m[..., k, k]))
        c = np.where(locked, 0.0, np.arctan2(-sign * m[..., i, j], m[..., i, i]))
        angles = np.stack([a, b, c], -1)
        return angles if intrinsic else angles[..., ::-1]

    return to_matrix, from_matrix


# -- the table -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Representation:
    name: str
    size: int
    to_matrix: Callable[[np.ndarray], np.ndarray]  # (..., size) -> (..., 3, 3)
    from_matrix: Callable[[np.ndarray], np.ndarray]  # (..., 3, 3) -> (..., size)
    doc: str


def _quat_wxyz_to_matrix(q: np.ndarray) -> np.ndarray:
    return quat_to_matrix(np.roll(np.asarray(q, np.float64), -1, axis=-1))


def _matrix_to_quat_wxyz(m: np.ndarray) -> np.ndarray:
    return np.roll(matrix_to_quat(m), 1, axis=-1)


REPRESENTATIONS: dict[str, Representation] = {r.name: r for r in (
    Representation("quat_xyzw", 4, quat_to_matrix, matrix_to_quat, "quaternion x, y, z, w (ROS, scipy, robosuite)"),
    Representation("quat_wxyz", 4, _quat_wxyz_to_matrix, _matrix_to_quat_wxyz,
                   "quaternion w, x, y, z (pytorch3d, MuJoCo)"),
    Representation("axis_angle", 3, lambda v: quat_to_matrix(axis_angle_to_quat(v)),
                   lambda m: quat_to_axis_angle(matrix_to_quat(m)),
                   "rotation vector, axis * angle in radians (UR TCP pose, LeRobot ee.w*, robomimic OSC)"),
    Representation("rotation_6d_rows", 6, rot6d_rows_to_matrix, matrix_to_rot6d_rows,
                   "first two rows of the matrix (pytorch3d matrix_to_rotation_6d: diffusion_policy, robomimic, UMI)"),
    Representation("rotation_6d_cols", 6, rot6d_cols_to_matrix, matrix_to_rot6d_cols,
                   "first two columns of the matrix (Zhou et al., pytransform3d)"),
    Representation("matrix", 9, lambda v: np.asarray(v, np.float64).reshape(np.shape(v)[:-1] + (3, 3)),
                   lambda m: np.asarray(m, np.float64).reshape(np.shape(m)[:-2] + (9,)), "3x3 matrix, row-major"),
    *(Representation(f"euler_{''.join(p)}", 3, *_euler("".join(p)),
                     f"{'intrinsic' if p[0].isupper() else 'extrinsic'} Euler angles about {'-'.join(p)} (radians)")
      for case in (str.upper, str.lower) for p in permutations(case("xyz"))),
)}


def representation(name: str, where: str = "rotation") -> Representation:
    """The table entry for ``name``; a ConfigError naming ``where`` and the choices otherwise."""
    try:
        return REPRESENTATIONS[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown rotation representation {name!r}; expected one of "
                          f"{', '.join(REPRESENTATIONS)}") from None


def convert(values: np.ndarray, source: str, target: str) -> np.ndarray:
    """``values`` (..., size of source) written in ``target`` (..., size of target)."""
    if source == target:
        return np.asarray(values, np.float64)
    return representation(target).from_matrix(representation(source).to_matrix(values))


def angle_between(m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
    """The rotation angle (radians, [0, pi]) taking ``m0`` to ``m1`` (..., 3, 3): a rotation error."""
    rel = np.swapaxes(m0, -1, -2) @ m1
    return np.linalg.norm(quat_to_axis_angle(matrix_to_quat(rel)), axis=-1)


def orthonormalize(m: np.ndarray) -> np.ndarray:
    """The nearest rotation matrix (SVD, determinant +1): a decoded or interpolated matrix made exact."""
    u, _, vt = np.linalg.svd(np.asarray(m, np.float64))
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    return u @ vt
