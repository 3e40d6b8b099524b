"""Rotation code written as the frameworks write it (the reference the conversions are checked against).

pytorch3d/transforms/rotation_conversions.py (facebookresearch/pytorch3d) is what diffusion_policy's
RotationTransformer (diffusion_policy/model/common/rotation_transformer.py: ``getattr(pt, f'matrix_to_{rep}')``)
and robomimic (robomimic/utils/torch_utils.py: ``axis_angle_to_rot_6d``) call; UMI has its own numpy
(umi/common/pose_util.py). Each helper keeps the source's name after its prefix.
"""
from __future__ import annotations

import numpy as np
import torch


def p3d_quaternion_to_matrix(quaternions):  # real part first
    r, i, j, k = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    o = torch.stack((1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
                     two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
                     two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j)), -1)
    return o.reshape(quaternions.shape[:-1] + (3, 3))


def p3d_axis_angle_to_quaternion(axis_angle):
    angles = torch.norm(axis_angle, p=2, dim=-1, keepdim=True)
    half_angles = angles * 0.5
    eps = 1e-6
    small_angles = angles.abs() < eps
    sin_half_angles_over_angles = torch.empty_like(angles)
    sin_half_angles_over_angles[~small_angles] = torch.sin(half_angles[~small_angles]) / angles[~small_angles]
    sin_half_angles_over_angles[small_angles] = 0.5 - (angles[small_angles] * angles[small_angles]) / 48
    return torch.cat([torch.cos(half_angles), axis_angle * sin_half_angles_over_angles], dim=-1)


def p3d_axis_angle_to_matrix(axis_angle):
    return p3d_quaternion_to_matrix(p3d_axis_angle_to_quaternion(axis_angle))


def p3d_matrix_to_rotation_6d(matrix):
    batch_dim = matrix.size()[:-2]
    return matrix[..., :2, :].clone().reshape(batch_dim + (6,))


def p3d_rotation_6d_to_matrix(d6):
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = torch.nn.functional.normalize(b2, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def p3d_axis_rotation(axis, angle):
    cos, sin, one, zero = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    flat = {"X": (one, zero, zero, zero, cos, -sin, zero, sin, cos),
            "Y": (cos, zero, sin, zero, one, zero, -sin, zero, cos),
            "Z": (cos, -sin, zero, sin, cos, zero, zero, zero, one)}[axis]
    return torch.stack(flat, -1).reshape(angle.shape + (3, 3))


def p3d_euler_angles_to_matrix(euler_angles, convention):
    m = [p3d_axis_rotation(c, e) for c, e in zip(convention, torch.unbind(euler_angles, -1))]
    return torch.matmul(torch.matmul(m[0], m[1]), m[2])


def umi_normalize(vec, eps=1e-12):
    norm = np.linalg.norm(vec, axis=-1)
    norm = np.maximum(norm, eps)
    return (vec.T / norm).T


def umi_rot6d_to_mat(d6):
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = umi_normalize(a1)
    b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = umi_normalize(b2)
    b3 = np.cross(b1, b2, axis=-1)
    return np.stack((b1, b2, b3), axis=-2)


def umi_mat_to_rot6d(mat):
    batch_dim = mat.shape[:-2]
    return mat[..., :2, :].copy().reshape(batch_dim + (6,))


def umi_pose_to_mat(pose):  # umi/common/pose_util.py: pose_to_mat(pose) = pos_rot_to_mat(*pose_to_pos_rot(pose))
    from scipy.spatial.transform import Rotation
    pos, rot = pose[..., :3], Rotation.from_rotvec(pose[..., 3:])
    mat = np.zeros(pos.shape[:-1] + (4, 4), dtype=pos.dtype)
    mat[..., :3, 3] = pos
    mat[..., :3, :3] = rot.as_matrix()
    mat[..., 3, 3] = 1
    return mat


def umi_mat_to_pose10d(mat):
    return np.concatenate([mat[..., :3, 3], umi_mat_to_rot6d(mat[..., :3, :3])], axis=-1)


def dp_convert_pose_mat_rep(pose_mat, base_pose_mat, pose_rep="abs", backward=False):
    # diffusion_policy/common/pose_repr_util.py (UMI's copy): the forward abs and relative branches, which the
    # observation side uses
    if not backward and pose_rep == "abs":
        return pose_mat
    if not backward and pose_rep == "relative":
        return np.linalg.inv(base_pose_mat) @ pose_mat
    raise RuntimeError(f"pose_rep {pose_rep} (backward={backward}) not written here")




def p3d_sqrt_positive_part(x):
    return torch.where(x > 0, torch.sqrt(torch.clamp(x, min=0)), torch.zeros_like(x))


def p3d_matrix_to_quaternion(matrix):
    batch_dim = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(batch_dim + (9,)), dim=-1)
    q_abs = p3d_sqrt_positive_part(torch.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                                                1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], dim=-1))
    quat_by_rijk = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1)], dim=-2)
    flr = torch.tensor(0.1).to(dtype=q_abs.dtype, device=q_abs.device)
    quat_candidates = quat_by_rijk / (2.0 * q_abs[..., None].max(flr))
    out = quat_candidates[torch.nn.functional.one_hot(q_abs.argmax(dim=-1), num_classes=4) > 0.5, :]
    out = out.reshape(batch_dim + (4,))
    return torch.where(out[..., 0:1] < 0, -out, out)  # standardize_quaternion


def p3d_quaternion_to_axis_angle(quaternions):
    norms = torch.norm(quaternions[..., 1:], p=2, dim=-1, keepdim=True)
    half_angles = torch.atan2(norms, quaternions[..., :1])
    angles = 2 * half_angles
    eps = 1e-6
    small_angles = angles.abs() < eps
    sin_half_angles_over_angles = torch.empty_like(angles)
    sin_half_angles_over_angles[~small_angles] = torch.sin(half_angles[~small_angles]) / angles[~small_angles]
    sin_half_angles_over_angles[small_angles] = 0.5 - (angles[small_angles] * angles[small_angles]) / 48
    return quaternions[..., 1:] / sin_half_angles_over_angles


def p3d_matrix_to_axis_angle(matrix):
    return p3d_quaternion_to_axis_angle(p3d_matrix_to_quaternion(matrix))


def dp_undo_transform_action(action, rotation_inverse=lambda rot: p3d_matrix_to_axis_angle(
        p3d_rotation_6d_to_matrix(torch.from_numpy(rot))).numpy()):
    """diffusion_policy/env_runner/robomimic_image_runner.py, RobomimicImageRunner.undo_transform_action, with its
    rotation_transformer = RotationTransformer('axis_angle', 'rotation_6d') (inverse: 6-D -> matrix -> axis-angle)."""
    raw_shape = action.shape
    if raw_shape[-1] == 20:
        action = action.reshape(-1, 2, 10)
    d_rot = action.shape[-1] - 4
    pos = action[..., :3]
    rot = action[..., 3:3 + d_rot]
    gripper = action[..., [-1]]
    rot = rotation_inverse(rot)
    uaction = np.concatenate([pos, rot, gripper], axis=-1)
    if raw_shape[-1] == 20:
        uaction = uaction.reshape(*raw_shape[:-1], 14)
    return uaction
