"""An end-effector task: a 3-joint planar arm with a two-finger gripper grasps a bar (position and orientation).

The arm is driven as a Cartesian robot is: an in-sim Cartesian controller takes an absolute pose target
(geometry_msgs/PoseStamped, as cartesian_controllers or MoveIt Servo's pose target) or a velocity
(geometry_msgs/TwistStamped, held for ``twist_timeout`` s, as MoveIt Servo), solves the arm's IK and
drives the joints at their velocity limit; the gripper is a joint driven by a command in robosuite's
convention (-1 open, +1 closed). It publishes the end-effector pose (PoseStamped, frame ``base_link``) and
the joint states with the two finger joints (robosuite's ``gripper_qpos``).

The bar lies at a random place and angle; the hand must be over its middle with the fingers across it
(the hand's direction along the bar, either way) when the fingers close on it. Closing elsewhere is a
miss (counted); the gripper has to open again. Plain numpy, like arm.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .arm import ArmConfig, ArmState, ReachingArm

ARM_JOINTS = ("shoulder", "elbow", "wrist")
FINGERS = ("finger_left", "finger_right")
BASE_FRAME = "base_link"


def wrap(a: float) -> float:
    """An angle into (-pi, pi]."""
    return float(np.pi - (np.pi - a) % (2 * np.pi))


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_quat(yaw: float) -> np.ndarray:
    """The xyzw quaternion of a rotation by ``yaw`` about z."""
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])


def matrix_yaw(m: np.ndarray) -> float:
    """The rotation about z of a rotation matrix (the planar arm's orientation; tilt is ignored)."""
    return float(np.arctan2(m[1, 0], m[0, 0]))


@dataclass
class GraspConfig(ArmConfig):
    link1: float = 0.42
    link2: float = 0.34
    link3: float = 0.14  # wrist to the point between the fingertips
    lower: tuple = (-np.pi, 0.0, -2.6)
    upper: tuple = (np.pi, 2.8, 2.6)
    home: tuple = (0.3, 1.7, 0.0)
    max_velocity: float = 1.6  # rad/s per joint
    episode_seconds: float = 8.0
    bar_length: float = 0.3
    bar_width: float = 0.03  # m: the fingers stop at this opening on the bar
    gripper_open: float = 0.08  # m between the fingers
    gripper_speed: float = 0.1  # m/s of the opening
    position_tolerance: float = 0.05  # m: the hand over the bar's middle third
    yaw_tolerance: float = 0.3  # rad: the hand along the bar
    bar_radius: tuple[float, float] = (0.4, 0.75)
    bar_angle: tuple[float, float] = (-1.6, 2.6)
    twist_timeout: float = 0.15  # s a velocity command is followed without a new one
    wrist_image_size: int = 64
    wrist_extent: float = 0.25  # m: the wrist camera sees this far either side of the hand


@dataclass
class GraspState(ArmState):
    bar_yaw: float = 0.0
    width: float = 0.08  # the gripper's opening, m
    gripper_target: float = 0.08
    goal: np.ndarray | None = None  # (3,) x, y, yaw: the Cartesian controller's target
    twist: np.ndarray = field(default_factory=lambda: np.zeros(3))  # vx, vy, wz
    twist_until: float = -1.0
    grasped: bool = False
    misses: int = 0


@dataclass(frozen=True)
class EeCommand:
    """A Cartesian command: an absolute target (x, y, yaw) or a velocity (vx, vy, wz), and the gripper's."""
    gripper: float | None  # -1 open .. +1 closed; None: as it was
    pose: np.ndarray | None = None
    twist: np.ndarray | None = None


class GraspingArm(ReachingArm):
    cfg: GraspConfig
    state: GraspState
    joint_names = ARM_JOINTS + FINGERS

    def __init__(self, cfg: GraspConfig | None = None, seed: int = 0):
        super().__init__(cfg or GraspConfig(), seed)

    def reset(self) -> GraspState:
        cfg = self.cfg
        for _ in range(1000):
            q = np.clip(np.array(cfg.home) + self.rng.uniform(-0.25, 0.25, 3), self.lower, self.upper)
            r, a = self.rng.uniform(*cfg.bar_radius), self.rng.uniform(*cfg.bar_angle)
            centre = r * np.array([np.cos(a), np.sin(a)])
            bar_yaw = self.rng.uniform(0, np.pi)
            yaw = self.grasp_yaw(centre, bar_yaw, self.hand_pose(q)[2])
            if yaw is not None and self.smooth_path(self.hand_pose(q), np.array([*centre, yaw])):
                break
        else:  # pragma: no cover - the sampling ranges leave room
            raise RuntimeError("no bar layout found")
        self.state = GraspState(q, centre, bar_yaw=bar_yaw, width=cfg.gripper_open, gripper_target=cfg.gripper_open)
        return self.state

    # -- kinematics -----------------------------------------------------------------
    def points(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(elbow, wrist, hand) in the plane."""
        c = self.cfg
        elbow = c.link1 * np.array([np.cos(q[0]), np.sin(q[0])])
        wrist = elbow + c.link2 * np.array([np.cos(q[0] + q[1]), np.sin(q[0] + q[1])])
        yaw = q[0] + q[1] + q[2]
        return elbow, wrist, wrist + c.link3 * np.array([np.cos(yaw), np.sin(yaw)])

    def hand_pose(self, q: np.ndarray) -> np.ndarray:
        """(x, y, yaw) of the point between the fingertips."""
        return np.array([*self.points(q)[2], wrap(q[0] + q[1] + q[2])])

    def elbow_and_hand(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, wrist, hand = self.points(q)
        return wrist, hand

    def ik3(self, goal: np.ndarray) -> np.ndarray | None:
        """Joint positions putting the hand at (x, y, yaw), the elbow on its one side; None: out of reach."""
        x, y, yaw = goal
        wrist = np.array([x, y]) - self.cfg.link3 * np.array([np.cos(yaw), np.sin(yaw)])
        l1, l2 = self.cfg.link1, self.cfg.link2
        d2 = float(wrist @ wrist)
        if not (l1 - l2) ** 2 + 1e-6 < d2 < (l1 + l2) ** 2 - 1e-6:
            return None
        q2 = np.arccos(np.clip((d2 - l1 ** 2 - l2 ** 2) / (2 * l1 * l2), -1, 1))
        q1 = wrap(np.arctan2(wrist[1], wrist[0]) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2)))
        q = np.array([q1, q2, wrap(yaw - q1 - q2)])
        return q if np.all(q >= self.lower) and np.all(q <= self.upper) else None

    def grasp_yaw(self, centre: np.ndarray, bar_yaw: float, hand_yaw: float) -> float | None:
        """The hand's yaw for grasping the bar (along it, either way), the one nearer ``hand_yaw`` that the arm
        reaches; None: neither."""
        options = sorted((wrap(bar_yaw + k * np.pi) for k in (0, 1)), key=lambda y: abs(wrap(y - hand_yaw)))
        return next((y for y in options if self.ik3(np.array([*centre, y])) is not None), None)

    def smooth_path(self, start: np.ndarray, goal: np.ndarray) -> bool:
        """Whether the expert's straight Cartesian move from ``start`` to ``goal`` stays in reach with joint motion
        the arm follows (no IK branch or joint-limit jump on the way): the layouts the task samples."""
        carrot, q = start, self.ik3(start)
        for _ in range(200):
            carrot = toward(carrot, goal, GraspExpert.speed * 0.1, GraspExpert.yaw_speed * 0.1)
            nxt = self.ik3(carrot)
            if q is None or nxt is None or np.abs(nxt - q).max() > 0.3:
                return False
            if np.allclose(carrot, goal):
                return True
            q = nxt
        return False

    def aligned(self) -> bool:
        """The hand over the bar's middle, along the bar (either way)."""
        s = self.state
        x, y, yaw = self.hand_pose(s.q)
        off = abs(wrap(yaw - s.bar_yaw))
        return (float(np.linalg.norm([x - s.target[0], y - s.target[1]])) < self.cfg.position_tolerance
                and min(off, np.pi - off) < self.cfg.yaw_tolerance)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), quaternion xyzw (4,)) of the hand in ``base_link`` (the arm's plane is z = 0)."""
        x, y, yaw = self.hand_pose(self.state.q)
        return np.array([x, y, 0.0]), yaw_quat(yaw)

    def urdf(self) -> str:
        """The arm as URDF (what it publishes on /robot_description): three revolute joints about z, the tool
        point ``hand`` between the fingertips, two prismatic fingers across the hand."""
        c = self.cfg
        links = "".join(f'<link name="{n}"/>' for n in ("base_link", "upper_arm", "forearm", "palm", "hand",
                                                         "left_finger", "right_finger"))

        def joint(name, kind, parent, child, x, lo, hi, axis="0 0 1"):
            return (f'<joint name="{name}" type="{kind}"><parent link="{parent}"/><child link="{child}"/>'
                    f'<origin xyz="{x} 0 0" rpy="0 0 0"/><axis xyz="{axis}"/>'
                    f'<limit lower="{lo}" upper="{hi}" effort="10" velocity="{c.max_velocity}"/></joint>')
        joints = [joint(n, "revolute", p, ch, x, lo, hi) for n, p, ch, x, lo, hi in zip(
            ARM_JOINTS, ("base_link", "upper_arm", "forearm"), ("upper_arm", "forearm", "palm"),
            (0.0, c.link1, c.link2), c.lower, c.upper)]
        joints.append('<joint name="tool" type="fixed"><parent link="palm"/><child link="hand"/>'
                      f'<origin xyz="{c.link3} 0 0" rpy="0 0 0"/></joint>')
        joints += [joint(n, "prismatic", "hand", ch, 0.0, *lim, axis=axis) for n, ch, lim, axis in (
            (FINGERS[0], "left_finger", (0.0, c.gripper_open / 2), "0 1 0"),
            (FINGERS[1], "right_finger", (-c.gripper_open / 2, 0.0), "0 1 0"))]
        return f'<?xml version="1.0"?><robot name="grasp_arm">{links}{"".join(joints)}</robot>'

    def joint_positions(self) -> np.ndarray:
        w = self.state.width / 2
        return np.array([*self.state.q, w, -w])

    # -- commands -------------------------------------------------------------------
    def command(self, cmd: EeCommand) -> None:
        """A Cartesian command (ValueError: not finite)."""
        s = self.state
        if cmd.gripper is not None:
            g = float(cmd.gripper)
            if not np.isfinite(g):
                raise ValueError(f"gripper command must be finite, got {g}")
            s.gripper_target = self.cfg.gripper_open * float(np.clip((1 - g) / 2, 0, 1))
        if cmd.pose is not None:
            pose = np.asarray(cmd.pose, np.float64)
            if pose.shape != (3,) or not np.all(np.isfinite(pose)):
                raise ValueError(f"pose target must be finite (x, y, yaw), got {pose}")
            s.goal, s.twist_until = pose.copy(), -1.0
        if cmd.twist is not None:
            twist = np.asarray(cmd.twist, np.float64)
            if twist.shape != (3,) or not np.all(np.isfinite(twist)):
                raise ValueError(f"twist must be finite (vx, vy, wz), got {twist}")
            s.goal, s.twist, s.twist_until = self.hand_pose(s.q), twist, s.t + self.cfg.twist_timeout

    def step(self, dt: float) -> None:
        s = self.state
        if s.goal is not None:
            if s.t < s.twist_until - 1e-9:  # (a float clock: not one step more)
                s.goal = s.goal + s.twist * dt
                s.goal[2] = wrap(s.goal[2])
            q = self.ik3(s.goal)
            if q is not None:  # out of reach: the controller keeps its last joint target
                s.command = q
        was = s.width
        s.width += float(np.clip(s.gripper_target - s.width, -self.cfg.gripper_speed * dt,
                                 self.cfg.gripper_speed * dt))
        if s.grasped:
            s.width = max(s.width, self.cfg.bar_width)  # the bar between the fingers
        elif was >= self.cfg.bar_width > s.width:  # the fingers closed through the bar's width
            if self.aligned():
                s.grasped, s.width = True, self.cfg.bar_width
            else:
                s.misses += 1
        super().step(dt)

    # -- episode --------------------------------------------------------------------
    def distance(self) -> float:
        return float(np.linalg.norm(self.hand_pose(self.state.q)[:2] - self.state.target))

    def success(self) -> bool:
        return self.state.grasped

    def done(self) -> bool:
        return self.state.grasped or self.state.t >= self.cfg.episode_seconds

    def outcome(self) -> dict[str, float]:
        s = self.state
        off = abs(wrap(self.hand_pose(s.q)[2] - s.bar_yaw))
        return {"distance": round(self.distance(), 4), "yaw_error": round(min(off, np.pi - off), 4),
                "misses": s.misses}

    # -- cameras --------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """Top-down: grey floor, the bar (red, its two ends marked magenta and orange: a direction a small encoder's
        keypoints find, where a thin line's angle is hard to read), blue links, yellow fingers."""
        return self._draw((self.gx, self.gy))

    def wrist_view(self) -> np.ndarray:
        """The camera on the hand (robosuite's ``robot0_eye_in_hand``), looking down with the hand's direction up:
        ``wrist_extent`` m either side of the point between the fingertips, so the bar's offset and angle from the
        grasp are what it shows (in the top-down image a 0.2 rad error turns the bar's ends by one pixel)."""
        c = self.cfg
        x, y, yaw = self.hand_pose(self.state.q)
        u = (np.arange(c.wrist_image_size) + 0.5) / c.wrist_image_size * 2 * c.wrist_extent - c.wrist_extent
        lat, fwd = np.meshgrid(-u, -u)  # row 0 ahead of the hand, column 0 on its left
        cy, sy = np.cos(yaw), np.sin(yaw)
        return self._draw((x + cy * fwd - sy * lat, y + sy * fwd + cy * lat), links=False)

    def _draw(self, grid: tuple[np.ndarray, np.ndarray], links: bool = True) -> np.ndarray:
        """The scene seen at ``grid`` (pixel centres in world coordinates); sizes are physical (the top-down
        camera's pixel), so both cameras show the same objects. ``links``: the arm's links (the wrist camera, mounted
        on the hand, sees its fingers and not the arm behind it)."""
        s, c = self.state, self.cfg
        img = np.empty(grid[0].shape + (3,), np.uint8)
        img[:] = (40, 40, 40)
        px = 2 * c.extent / c.image_size
        along = 0.5 * c.bar_length * np.array([np.cos(s.bar_yaw), np.sin(s.bar_yaw)])
        img[self._segment(s.target - along, s.target + along, max(c.bar_width / 2, 1.2 * px), grid)] = (230, 40, 40)
        img[self.disk(s.target + along, 2.5 * px, grid)] = (230, 60, 230)
        img[self.disk(s.target - along, 2.5 * px, grid)] = (250, 150, 30)
        elbow, wrist, hand = self.points(s.q)
        if links:
            for a, b in ((np.zeros(2), elbow), (elbow, wrist)):
                img[self._segment(a, b, 1.3 * px, grid)] = (60, 120, 230)
            img[self._segment(wrist, hand, 0.9 * px, grid)] = (120, 200, 240)
        yaw = self.hand_pose(s.q)[2]
        lateral = np.array([-np.sin(yaw), np.cos(yaw)])
        for side in (1, -1):
            img[self.disk(hand + side * (s.width / 2 + px) * lateral, 1.3 * px, grid)] = (240, 220, 60)
        return img


def toward(carrot: np.ndarray, goal: np.ndarray, step: float, yaw_step: float) -> np.ndarray:
    """(x, y, yaw) ``carrot`` moved toward ``goal`` by at most ``step`` m and ``yaw_step`` rad (the shorter way)."""
    d = goal - carrot
    d[2] = wrap(d[2])
    dist = float(np.linalg.norm(d[:2]))
    lin = d[:2] * min(1.0, step / dist) if dist > 1e-9 else d[:2]
    out = carrot + np.array([*lin, np.clip(d[2], -yaw_step, yaw_step)])
    out[2] = wrap(out[2])
    return out


class GraspExpert:
    """Straight to the grasp pose in Cartesian space (position and yaw at a speed the arm follows), then closes
    the gripper. ``twist``: commands the motion as per-step velocities from the measured pose (robosuite OSC's delta
    convention; within OSC's input range: 0.03 m and 0.12 rad per step against 0.05 m and 0.5 rad) instead of
    absolute targets, each a share ``gain`` of the way left, capped at those speeds (as a teleoperator slows
    near the target)."""
    speed = 0.3  # m/s
    yaw_speed = 1.2  # rad/s
    gain = 0.3  # twist: the share of the way left in one step (0.3 s time constant at 10 Hz)

    def __init__(self, arm: GraspingArm, twist: bool = False, seed: int = 0):
        self.arm, self.twist = arm, twist
        self.goal = np.zeros(3)
        self.carrot = np.zeros(3)
        self.closing = False

    def reset(self) -> None:
        s = self.arm.state
        hand = self.arm.hand_pose(s.q)
        self.goal = np.array([*s.target, self.arm.grasp_yaw(s.target, s.bar_yaw, hand[2])])
        self.carrot = hand
        self.closing = False

    def action(self, dt: float) -> EeCommand:
        s = self.arm.state
        hand = self.arm.hand_pose(s.q)
        if self.twist:  # the way along the bar: the nearer to the hand's yaw now (what the policy sees), not at start
            yaw = self.arm.grasp_yaw(s.target, s.bar_yaw, hand[2])
            self.goal = self.goal if yaw is None else np.array([*s.target, yaw])
        off = self.goal - hand
        off[2] = wrap(off[2])
        there = float(np.linalg.norm(off[:2])) < 0.012 and abs(off[2]) < 0.08
        # close once there with the fingers open (closed fingers, after a miss, open first)
        self.closing = there and (self.closing or s.width >= self.arm.cfg.gripper_open - 1e-6)
        gripper = 1.0 if self.closing or s.grasped else -1.0
        if not self.twist:
            self.carrot = toward(self.carrot, self.goal, self.speed * dt, self.yaw_speed * dt)
            return EeCommand(gripper, pose=self.carrot.copy())
        # a step from the measured pose toward the grasp pose: a delta is applied to the pose measured when it
        # executes (robosuite's OSC), so the step is a function of what the policy sees (the hand, the bar), not of
        # the carrot's hidden lead (which left the delta policy guessing how far the hand lagged). Proportional to
        # the way left near the grasp: a step at full speed until the last one (bang-bang) made every step's sign
        # and size turn on the bar's angle read to within a step (the delta policy turned past the bar: 45 %)
        delta = toward(hand, hand + self.gain * off, self.speed * dt, self.yaw_speed * dt) - hand
        delta[2] = wrap(delta[2])
        return EeCommand(gripper, twist=delta / dt)
