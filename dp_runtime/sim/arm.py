"""A planar 2-link arm reaching a target: kinematics, a top-down camera, a scripted expert.

Plain numpy, no ROS: the dp-sim node, the demonstration recorder and the
BatchNorm experiment all step this same model. This is the ``reach`` task; the
harder tasks (tasks.py) subclass it through the episode hooks (``advance``,
``done``, ``succeeded``, ``outcome``, ``draw``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

JOINTS = ("shoulder", "elbow")


@dataclass
class ArmConfig:
    link1: float = 0.5
    link2: float = 0.45
    lower: tuple[float, float] = (-np.pi, 0.0)  # elbow kept on one side: one IK solution per target
    upper: tuple[float, float] = (np.pi, 2.8)
    max_velocity: float = 1.6  # rad/s per joint
    success_radius: float = 0.08  # m, end effector to target
    target_radius: tuple[float, float] = (0.35, 0.85)  # targets appear in this annulus sector, where the
    target_angle: tuple[float, float] = (-1.8, 2.9)  # shoulder reaches them without crossing its +-pi limit
    image_size: int = 96
    extent: float = 1.05  # the camera sees [-extent, extent]^2
    home: tuple[float, float] = (0.0, 1.6)
    episode_seconds: float = 6.0
    physics_hz: float = 100.0


@dataclass
class ArmState:
    q: np.ndarray  # (2,) joint positions
    target: np.ndarray  # (2,) target position in the plane
    command: np.ndarray | None = None  # last joint position command
    t: float = 0.0
    history: list = field(default_factory=list)


class ReachingArm:
    joint_names = JOINTS  # what its JointState names, in order

    def __init__(self, cfg: ArmConfig = ArmConfig(), seed: int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.lower, self.upper = np.array(cfg.lower), np.array(cfg.upper)
        n = cfg.image_size
        # Pixel centres in world coordinates; image row 0 is +y (top-down view, x right, y up).
        px = (np.arange(n) + 0.5) / n * 2 * cfg.extent - cfg.extent
        self.gx, self.gy = np.meshgrid(px, -px)
        self.state = self.reset()

    # -- episode --------------------------------------------------------------------
    def sample_target(self) -> np.ndarray:
        r = self.rng.uniform(*self.cfg.target_radius)
        a = self.rng.uniform(*self.cfg.target_angle)
        return np.array([r * np.cos(a), r * np.sin(a)])

    def reset(self) -> ArmState:
        q = np.array(self.cfg.home) + self.rng.uniform(-0.2, 0.2, 2)
        self.state = ArmState(np.clip(q, self.lower, self.upper), self.sample_target())
        return self.state

    # -- kinematics -----------------------------------------------------------------
    def elbow_and_hand(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        l1, l2 = self.cfg.link1, self.cfg.link2
        elbow = l1 * np.array([np.cos(q[0]), np.sin(q[0])])
        hand = elbow + l2 * np.array([np.cos(q[0] + q[1]), np.sin(q[0] + q[1])])
        return elbow, hand

    def ik(self, p: np.ndarray) -> np.ndarray:
        """Joint positions putting the hand at ``p`` (elbow angle >= 0 branch)."""
        l1, l2 = self.cfg.link1, self.cfg.link2
        d2 = float(np.clip(p @ p, (l1 - l2) ** 2 + 1e-9, (l1 + l2) ** 2 - 1e-9))
        c2 = (d2 - l1 ** 2 - l2 ** 2) / (2 * l1 * l2)
        q2 = np.arccos(np.clip(c2, -1, 1))
        q1 = np.arctan2(p[1], p[0]) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
        if q1 < -np.pi:  # joint limits, no wrap-around: the shoulder is a revolute joint with stops
            q1 += 2 * np.pi
        return np.array([q1, q2])

    def distance(self) -> float:
        return float(np.linalg.norm(self.elbow_and_hand(self.state.q)[1] - self.state.target))

    def joint_positions(self) -> np.ndarray:
        """What its JointState reports, in ``joint_names`` order."""
        return self.state.q

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(position, quaternion xyzw) of the end effector where the arm publishes one (None: joint space only)."""
        return None

    def success(self) -> bool:
        return self.distance() < self.cfg.success_radius

    # -- episode hooks (one per task) ---------------------------------------------------
    def done(self) -> bool:
        """The episode is over (reach: the hand is at the target, or the time is up)."""
        return self.success() or self.state.t >= self.cfg.episode_seconds

    def succeeded(self) -> bool:
        return self.success()

    def outcome(self) -> dict[str, float]:
        """The task's own measures of the episode so far (reach: the hand's distance to the target, m)."""
        return {"distance": round(self.distance(), 4)}

    def advance(self, dt: float) -> None:
        """What moves besides the arm in one physics step (reach: nothing)."""

    def draw(self, img: np.ndarray, px: float) -> None:
        """Scenery drawn under the arm (reach: none)."""

    # -- dynamics -------------------------------------------------------------------
    def command(self, target_q: np.ndarray) -> None:
        """A joint position command (as a forward position controller takes it)."""
        target_q = np.asarray(target_q, dtype=np.float64)
        if target_q.shape != (2,) or not np.all(np.isfinite(target_q)):
            raise ValueError(f"command must be 2 finite joint positions, got {target_q}")
        self.state.command = np.clip(target_q, self.lower, self.upper)

    def step(self, dt: float) -> None:
        """Move toward the command at the velocity limit, within joint limits."""
        s = self.state
        if s.command is not None:
            step = np.clip(s.command - s.q, -self.cfg.max_velocity * dt, self.cfg.max_velocity * dt)
            s.q = np.clip(s.q + step, self.lower, self.upper)
        s.t += dt
        self.advance(dt)

    # -- camera ---------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """(S, S, 3) uint8 top-down image: grey floor, red target, blue links, yellow hand."""
        s = self.state
        img = np.empty(self.gx.shape + (3,), np.uint8)
        img[:] = (40, 40, 40)
        px = 2 * self.cfg.extent / self.cfg.image_size
        self.draw(img, px)
        img[self.disk(s.target, 3.5 * px)] = (230, 40, 40)
        elbow, hand = self.elbow_and_hand(s.q)
        for a, b in ((np.zeros(2), elbow), (elbow, hand)):
            img[self._segment(a, b, 1.3 * px)] = (60, 120, 230)
        img[self.disk(hand, 1.8 * px)] = (240, 220, 60)
        return img

    def wrist_view(self) -> np.ndarray | None:
        """The image of a camera on the hand, where the arm has one (robosuite's ``eye_in_hand``; None: none)."""
        return None

    def disk(self, centre: np.ndarray, radius: float, grid: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """(S, S) bool: the pixels within ``radius`` of ``centre`` (world coordinates); ``grid``: the pixel centres
        in world coordinates of another camera than the top-down one."""
        gx, gy = grid or (self.gx, self.gy)
        return (gx - centre[0]) ** 2 + (gy - centre[1]) ** 2 < radius ** 2

    def _segment(self, a: np.ndarray, b: np.ndarray, width: float,
                 grid: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        gx, gy = grid or (self.gx, self.gy)
        ab = b - a
        t = np.clip(((gx - a[0]) * ab[0] + (gy - a[1]) * ab[1]) / max(ab @ ab, 1e-12), 0, 1)
        dx = gx - (a[0] + t * ab[0])
        dy = gy - (a[1] + t * ab[1])
        return dx * dx + dy * dy < width * width


class ScriptedExpert:
    """Straight line in joint space to the IK solution, at a speed the arm can follow."""

    def __init__(self, arm: ReachingArm, speed: float = 1.2, seed: int = 0):
        self.arm = arm
        self.speed = speed

    def reset(self) -> None:
        """A new episode has started (the reaching expert has no per-episode choice)."""

    def action(self, dt: float) -> np.ndarray:
        s = self.arm.state
        goal = self.arm.ik(s.target)
        base = s.command if s.command is not None else s.q
        return base + np.clip(goal - base, -self.speed * dt, self.speed * dt)
