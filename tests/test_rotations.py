"""The rotation table: every representation round-trips, and each framework's convention is reproduced
exactly on rotations converted by code written as that framework writes it (source named per helper)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_runtime import rotations as rot
from dp_runtime.errors import ConfigError, InputError
from tests.helpers.framework_rotations import (p3d_axis_angle_to_matrix, p3d_euler_angles_to_matrix,
                                               p3d_matrix_to_rotation_6d, p3d_quaternion_to_matrix,
                                               p3d_rotation_6d_to_matrix, umi_mat_to_rot6d, umi_rot6d_to_mat)


def random_matrices(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random rotations, plus a share within 1e-4 rad of pi and of 0 and exact pi turns."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    axes = rng.normal(size=(n // 5, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    near_pi = axes * (np.pi - rng.uniform(0, 1e-4, size=(len(axes), 1)))
    near_zero = axes * rng.uniform(0, 1e-4, size=(len(axes), 1))
    exact = np.array([[np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi], [0, 0, 0]])
    m = rot.quat_to_matrix(q)
    m[: len(axes)] = rot.REPRESENTATIONS["axis_angle"].to_matrix(near_pi)
    m[len(axes): 2 * len(axes)] = rot.REPRESENTATIONS["axis_angle"].to_matrix(near_zero)
    m[-4:] = rot.REPRESENTATIONS["axis_angle"].to_matrix(exact)
    return m


MATRICES = random_matrices(10_000)


def test_matrices_are_rotations():
    assert np.abs(MATRICES @ np.swapaxes(MATRICES, 1, 2) - np.eye(3)).max() < 1e-12
    assert np.abs(np.linalg.det(MATRICES) - 1).max() < 1e-12


@pytest.mark.parametrize("name", list(rot.REPRESENTATIONS))
def test_every_representation_round_trips_within_1e6(name):
    r = rot.REPRESENTATIONS[name]
    values = r.from_matrix(MATRICES)
    assert values.shape == (len(MATRICES), r.size)
    back = r.to_matrix(values)
    assert np.abs(back - MATRICES).max() < 1e-6, name
    assert rot.angle_between(back, MATRICES).max() < 1e-6, name


def test_axis_angle_near_pi_keeps_full_precision():
    axis = np.array([0.6, 0.0, 0.8])
    for angle in (np.pi, np.pi - 1e-7, np.pi - 1e-3):
        v = rot.convert(axis * angle, "axis_angle", "axis_angle")
        m = rot.REPRESENTATIONS["axis_angle"].to_matrix(axis * angle)
        got = rot.REPRESENTATIONS["axis_angle"].from_matrix(m)
        # at exactly pi, v and -v are the same rotation
        assert min(np.abs(got - axis * angle).max(), np.abs(got + axis * angle).max()) < 1e-7, angle
        assert np.allclose(v, axis * angle)


def test_quaternions_are_written_with_w_positive_and_read_normalized():
    q = rot.REPRESENTATIONS["quat_xyzw"].from_matrix(MATRICES)
    assert (q[:, 3] >= 0).all() and np.allclose(np.linalg.norm(q, axis=1), 1)
    m = rot.quat_to_matrix(-3.0 * q)  # -q is the same rotation; the scale is normalized away
    assert np.abs(m - MATRICES).max() < 1e-9


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [np.nan, 0, 0, 1], [np.inf, 0, 0, 1]])
def test_zero_or_non_finite_quaternion_is_refused(bad):
    with pytest.raises(InputError, match="quaternion"):
        rot.quat_to_matrix(np.array(bad, float))


def test_unknown_representation_names_the_choices():
    with pytest.raises(ConfigError, match="action.rotation: unknown rotation representation 'rot6d'.*rotation_6d_rows"):
        rot.representation("rot6d", where="action.rotation")


def test_hemisphere_keeps_a_stream_without_sign_flips():
    q = rot.matrix_to_quat(MATRICES[:100])
    flipped = np.where(np.arange(100)[:, None] % 2 == 0, q, -q)
    kept = rot.hemisphere(flipped, q)
    assert np.allclose(kept, q)


def test_slerp_takes_the_short_arc_at_constant_speed():
    q0 = rot.axis_angle_to_quat(np.array([0, 0, 3.0]))
    q1 = rot.axis_angle_to_quat(np.array([0, 0, -3.0]))  # 0.283 rad apart through pi, not 6 rad
    mid = rot.slerp(q0, q1, 0.5)
    angle = rot.angle_between(rot.quat_to_matrix(q0), rot.quat_to_matrix(mid))
    assert abs(angle - (2 * np.pi - 6) / 2) < 1e-9
    # a rotation vector interpolated linearly would pass through 0 rad instead (lerobot #3691)
    assert np.abs(rot.quat_to_axis_angle(mid)).max() > 3.1


def test_orthonormalize_gives_the_nearest_rotation():
    noisy = MATRICES[:50] + np.random.default_rng(1).normal(scale=1e-3, size=(50, 3, 3))
    fixed = rot.orthonormalize(noisy)
    assert np.abs(fixed @ np.swapaxes(fixed, 1, 2) - np.eye(3)).max() < 1e-12
    assert np.allclose(np.linalg.det(fixed), 1)
    assert rot.angle_between(fixed, MATRICES[:50]).max() < 5e-3


ROTVECS = rot.REPRESENTATIONS["axis_angle"].from_matrix(MATRICES)


def test_diffusion_policy_rotation_transformer_axis_angle_to_rotation_6d():
    """RotationTransformer('axis_angle', 'rotation_6d').forward: pt.axis_angle_to_matrix, pt.matrix_to_rotation_6d;
    inverse: pt.rotation_6d_to_matrix then pt.matrix_to_axis_angle (undo_transform_action in the env runner)."""
    theirs = p3d_matrix_to_rotation_6d(p3d_axis_angle_to_matrix(torch.from_numpy(ROTVECS))).numpy()
    ours = rot.convert(ROTVECS, "axis_angle", "rotation_6d_rows")
    assert np.abs(ours - theirs).max() < 1e-6
    # the columns convention differs (a transposed rotation: the hand twisted), which is what the table prevents
    assert np.abs(rot.convert(ROTVECS, "axis_angle", "rotation_6d_cols") - theirs).max() > 0.5
    # decoding a network's slightly non-orthonormal output, as their inverse does
    noisy = theirs + np.random.default_rng(2).normal(scale=0.05, size=theirs.shape)
    theirs_m = p3d_rotation_6d_to_matrix(torch.from_numpy(noisy)).numpy()
    assert np.abs(rot.REPRESENTATIONS["rotation_6d_rows"].to_matrix(noisy) - theirs_m).max() < 1e-9


def test_robomimic_quaternion_observation_and_axis_angle_to_rot_6d():
    """robosuite's robot0_eef_quat is xyzw; pytorch3d's quaternion is wxyz: the same rotation, reordered."""
    xyzw = rot.matrix_to_quat(MATRICES)
    wxyz = np.roll(xyzw, 1, axis=-1)
    theirs = p3d_quaternion_to_matrix(torch.from_numpy(wxyz)).numpy()
    assert np.abs(rot.REPRESENTATIONS["quat_xyzw"].to_matrix(xyzw) - theirs).max() < 1e-9
    assert np.abs(rot.REPRESENTATIONS["quat_wxyz"].to_matrix(wxyz) - theirs).max() < 1e-9
    assert np.abs(rot.REPRESENTATIONS["quat_wxyz"].from_matrix(MATRICES) - wxyz).max() < 1e-9


def test_umi_pose_util_rot6d():
    theirs = umi_mat_to_rot6d(MATRICES)
    assert np.abs(rot.REPRESENTATIONS["rotation_6d_rows"].from_matrix(MATRICES) - theirs).max() < 1e-12
    noisy = theirs + np.random.default_rng(3).normal(scale=0.05, size=theirs.shape)
    assert np.abs(rot.REPRESENTATIONS["rotation_6d_rows"].to_matrix(noisy) - umi_rot6d_to_mat(noisy)).max() < 1e-9


@pytest.mark.parametrize("convention", ["XYZ", "ZYX", "YXZ", "ZXY"])
def test_pytorch3d_euler_conventions_are_intrinsic(convention):
    angles = np.random.default_rng(4).uniform(-3, 3, size=(1000, 3))
    angles[:, 1] = np.clip(angles[:, 1], -1.5, 1.5)
    theirs = p3d_euler_angles_to_matrix(torch.from_numpy(angles), convention).numpy()
    assert np.abs(rot.REPRESENTATIONS[f"euler_{convention}"].to_matrix(angles) - theirs).max() < 1e-12
    # extrinsic zyx is intrinsic XYZ with the angles reversed
    ext = rot.REPRESENTATIONS[f"euler_{convention.lower()[::-1]}"].to_matrix(angles[:, ::-1])
    assert np.abs(ext - theirs).max() < 1e-12
