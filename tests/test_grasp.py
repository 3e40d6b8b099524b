"""The end-effector sim task (grasp): its Cartesian controller, gripper and URDF, and its demonstrations through
dp-dataset into the action conventions the policy is trained in (robomimic *_abs: 10-D pos/rot6d rows/gripper;
robomimic OSC deltas: 7-D, through TwistStamped)."""
from __future__ import annotations

import numpy as np
import pytest

from dp_runtime import rotations
from dp_runtime.dataset import DatasetConfig, bag_to_dataset
from dp_runtime.errors import ConfigError
from dp_runtime.sim.demo import config_path
from dp_runtime.sim.grasp import EeCommand, GraspingArm, wrap
from dp_runtime.sim.record import GripperSlips, PoseNoise, record_demonstrations
from dp_runtime.sim.tasks import TASKS


def settle(arm: GraspingArm, seconds: float) -> None:
    for _ in range(int(round(seconds * 100))):
        arm.step(0.01)


def test_a_pose_target_is_reached_and_one_out_of_reach_keeps_the_last_joint_target():
    arm = GraspingArm(seed=1)
    goal = np.array([0.5, 0.3, 0.4])
    arm.command(EeCommand(None, pose=goal))
    settle(arm, 3.0)
    hand = arm.hand_pose(arm.state.q)
    assert np.abs(hand[:2] - goal[:2]).max() < 1e-6 and abs(wrap(hand[2] - goal[2])) < 1e-6
    arm.command(EeCommand(None, pose=np.array([3.0, 0.0, 0.0])))  # 3 m away: beyond the arm
    settle(arm, 0.5)
    assert np.abs(arm.hand_pose(arm.state.q) - hand).max() < 1e-9


def test_a_twist_moves_the_hand_for_its_timeout_only():
    arm = GraspingArm(seed=2)
    arm.command(EeCommand(None, pose=np.array([0.5, 0.0, 0.0])))
    settle(arm, 3.0)
    start = arm.hand_pose(arm.state.q)
    arm.command(EeCommand(None, twist=np.array([0.1, 0.2, 0.5])))  # held 0.15 s, then the goal stays
    settle(arm, 2.0)
    moved = arm.hand_pose(arm.state.q) - start
    assert np.allclose(moved, np.array([0.1, 0.2, 0.5]) * arm.cfg.twist_timeout, atol=2e-3), moved


def test_closing_away_from_the_bar_is_a_miss_and_closing_over_it_along_it_a_grasp():
    arm = GraspingArm(seed=3)
    s = arm.state
    arm.command(EeCommand(1.0, pose=np.array([*(s.target + 0.1), s.bar_yaw])))  # closed 10 cm off
    settle(arm, 3.0)
    assert s.misses == 1 and not arm.succeeded() and s.width == 0.0
    yaw = arm.grasp_yaw(s.target, s.bar_yaw, arm.hand_pose(s.q)[2])
    arm.command(EeCommand(-1.0, pose=np.array([*s.target, wrap(yaw + np.pi / 2)])))  # across the bar: no grasp
    settle(arm, 3.0)
    arm.command(EeCommand(1.0))
    settle(arm, 1.0)
    assert s.misses == 2 and not arm.succeeded()
    arm.command(EeCommand(-1.0, pose=np.array([*s.target, yaw])))
    settle(arm, 3.0)
    arm.command(EeCommand(1.0))
    settle(arm, 1.0)
    assert arm.succeeded() and arm.done() and s.width == arm.cfg.bar_width


def test_bad_commands_are_refused_with_what_was_expected():
    arm = GraspingArm(seed=4)
    with pytest.raises(ValueError, match="pose target must be finite"):
        arm.command(EeCommand(None, pose=np.array([np.nan, 0.0, 0.0])))
    with pytest.raises(ValueError, match="gripper command must be finite"):
        arm.command(EeCommand(float("inf")))


def test_the_published_urdf_gives_the_published_pose_by_forward_kinematics():
    """What a robot without a pose topic does (obs type fk): the URDF on /robot_description and the joint states
    give the hand pose the sim publishes."""
    from dp_runtime.kinematics import Kinematics
    arm = GraspingArm(seed=5)
    kin = Kinematics(arm.urdf(), "hand")
    assert kin.joint_names == ["shoulder", "elbow", "wrist"]
    for q in np.random.default_rng(0).uniform(arm.lower, arm.upper, (20, 3)):
        arm.state.q = q
        position, quat = arm.ee_pose()
        m = kin.forward(q)
        assert np.abs(m[:3, 3] - position).max() < 1e-12
        assert rotations.angle_between(m[None, :3, :3], rotations.quat_to_matrix(quat)[None])[0] < 1e-7


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    d = tmp_path_factory.mktemp("grasp")
    return {name: record_demonstrations(d / name, 4, seed=3, task=TASKS[name]) and d / name
            for name in ("grasp", "grasp_delta")}


NO_NOISE = PoseNoise((0.0, 0.0), np.random.default_rng(0))


def episode(arm, expert, slips: GripperSlips, noise: PoseNoise = NO_NOISE) -> list[tuple[EeCommand, EeCommand]]:
    """One episode on the recorder's schedule (a command every 0.1 s, physics at 100 Hz): (recorded, executed)."""
    arm.reset()
    expert.reset()
    slips.reset()
    noise.reset()
    out, k = [], 0
    while not arm.done():
        if k % 10 == 0:
            command = expert.action(0.1)
            out.append((command, slips(noise(command, 0.1, arm.distance()), arm.state.t, 0.1, arm.distance())))
            arm.command(out[-1][1])
        arm.step(0.01)
        k += 1
    return out


def expert_commands(name: str, episodes: int = 4, seed: int = 3) -> list[EeCommand]:
    """The expert's commands, replayed in-process with the recorder's seeds and schedule, less each episode's first
    (recorded before the episode's first camera frame: no observation history, no sample)."""
    task = TASKS[name]
    arm = task.arm(seed)
    expert = task.expert(arm, seed)
    slips = GripperSlips(task.gripper_slips, np.random.default_rng(seed + 7_919))
    noise = PoseNoise(task.pose_noise, np.random.default_rng(seed + 15_485_863))
    return [recorded for _ in range(episodes) for recorded, _ in episode(arm, expert, slips, noise)[1:]]


def test_pose_noise_moves_the_executed_target_only_fades_at_the_grasp_and_the_expert_still_grasps():
    """DART in Cartesian space: the executed target is off the expert's by a few cm / tenths of a rad, the recorded
    one is the expert's; near the bar the offset fades, so the expert's own closing rule is met and it grasps."""
    task = TASKS["grasp"]
    arm = task.arm(1)
    expert = task.expert(arm, 1)
    noise = PoseNoise((0.025, 0.15), np.random.default_rng(0))
    offsets = []
    for _ in range(10):
        pairs = episode(arm, expert, GripperSlips(0.0, np.random.default_rng(0)), noise)
        offsets += [executed.pose - recorded.pose for recorded, executed in pairs]
        assert arm.succeeded() and arm.state.misses == 0
        assert np.abs(noise.offset[:2]).max() < 0.012  # faded: the hand was there when it closed
    spread = np.abs(np.array(offsets)).mean(axis=0)
    assert 0.005 < spread[0] < 0.03 and 0.005 < spread[1] < 0.03 and 0.03 < spread[2] < 0.2


def test_the_wrist_camera_shows_the_bar_along_the_hand_when_aligned():
    """The eye-in-hand view is in the hand's frame: at the grasp the bar runs up the image's middle column (the hand's
    direction) whatever the bar's angle in the world; a quarter turn off, it runs across."""
    arm = TASKS["grasp"].arm(3)
    s = arm.state
    yaw = arm.grasp_yaw(s.target, s.bar_yaw, 0.0)
    red = np.array([230, 40, 40])
    across = next(q for turn in (np.pi / 2, -np.pi / 2) if (q := arm.ik3(np.array([*s.target, wrap(yaw + turn)])))
                  is not None)
    for q, along_rows in ((arm.ik3(np.array([*s.target, yaw])), True), (across, False)):
        s.q = q
        img = arm.wrist_view()
        assert img.shape == (64, 64, 3)
        rows, cols = np.nonzero(np.all(img == red, axis=-1))
        spread_rows, spread_cols = np.ptp(rows), np.ptp(cols)
        assert (spread_rows > 2 * spread_cols) if along_rows else (spread_cols > 2 * spread_rows)
    assert TASKS["reach"].arm(0).wrist_view() is None


def test_gripper_slips_close_the_executed_gripper_only_and_the_expert_recovers():
    """DART for the gripper: the executed command closes for a moment (a miss), the recorded one stays the
    expert's open; the expert's next commands open it again and it still grasps."""
    task = TASKS["grasp"]
    arm = task.arm(0)
    expert = task.expert(arm, 0)
    slips = GripperSlips(5.0, np.random.default_rng(0))  # often
    missed = 0
    for _ in range(10):
        pairs = episode(arm, expert, slips)
        assert all(executed.gripper == 1.0 or executed is recorded for recorded, executed in pairs)
        assert arm.succeeded()
        missed += arm.state.misses > 0
    assert missed >= 3


def test_grasp_demonstrations_become_robomimic_abs_actions(bags):
    """PoseStamped targets -> [position, pytorch3d's matrix_to_rotation_6d (rows), gripper]; the gripper's command,
    on its own topic, joined to each target."""
    cfg = DatasetConfig.load(config_path("grasp_dataset.yaml"))
    arrays, info = bag_to_dataset(bags["grasp"], cfg)
    assert info["episodes"] == 4 and info["low_dims"] == {"robot0_eef_pos": 3, "robot0_eef_quat": 4,
                                                          "robot0_gripper_qpos": 2}
    assert arrays["robot0_eye_in_hand_image"].shape[-3:] == (64, 64, 3)
    # the executed step of each sample (index n_obs_steps - 1 of its chunk) is that tick's command
    actions = arrays["action"][:, cfg.n_obs_steps - 1]
    want = []
    for c in expert_commands("grasp"):
        m = rotations.quat_to_matrix(np.array([0, 0, np.sin(c.pose[2] / 2), np.cos(c.pose[2] / 2)]))
        want.append([c.pose[0], c.pose[1], 0.0, *m[:2].reshape(-1), c.gripper])
    assert actions.shape[1] == 10 and len(actions) == len(want)
    assert np.abs(actions - np.array(want, np.float32)).max() < 1e-6
    assert set(np.unique(actions[:, 9])) == {-1.0, 1.0}
    quat = arrays["robot0_eef_quat"].reshape(-1, 4)
    assert np.allclose(np.linalg.norm(quat, axis=1), 1, atol=1e-6) and np.all(quat[:, :2] == 0)
    # each episode's history starts canonical (w >= 0) and its quaternions continue from sample to sample
    newest, episodes = arrays["robot0_eef_quat"][:, -1], arrays["episode"]
    starts = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])
    assert len(starts) == 4 and np.all(newest[starts, 3] >= 0)
    same = episodes[1:] == episodes[:-1]
    assert np.all(np.sum(newest[1:] * newest[:-1], axis=1)[same] > 0.9)


def test_grasp_delta_demonstrations_become_robomimic_osc_actions(bags):
    """TwistStamped velocities -> per-step deltas in [-1, 1]: velocity * command_period_s / scale (0.05 m, 0.5 rad)."""
    cfg = DatasetConfig.load(config_path("grasp_delta_dataset.yaml"))
    arrays, _ = bag_to_dataset(bags["grasp_delta"], cfg)
    actions = arrays["action"][:, cfg.n_obs_steps - 1]
    want = [[c.twist[0] * 0.1 / 0.05, c.twist[1] * 0.1 / 0.05, 0.0, 0.0, 0.0, c.twist[2] * 0.1 / 0.5, c.gripper]
            for c in expert_commands("grasp_delta")]
    assert np.abs(actions - np.array(want, np.float32)).max() < 1e-5
    assert np.abs(actions[:, :6]).max() <= 1.0


def test_dataset_configs_refuse_what_cannot_be_read(tmp_path):
    text = config_path("grasp_dataset.yaml").read_text()
    bad = tmp_path / "a.yaml"
    bad.write_text(text.replace("      layout: [{kind: position}]\n", ""))
    with pytest.raises(ConfigError, match="robot0_eef_pos.*need a layout"):
        DatasetConfig.load(bad)
    bad.write_text(text.replace("command_parts: {gripper:", "command_parts: {fingers:"))
    with pytest.raises(ConfigError, match="command_parts 'fingers' is not a segment kind"):
        DatasetConfig.load(bad)
    bad.write_text(text.replace("representation: rotation_6d_rows", "representation: rot6d"))
    with pytest.raises(ConfigError, match="representation 'rot6d'"):
        DatasetConfig.load(bad)


def test_the_sim_messages_read_back_as_the_arm_state_and_commands_as_the_arm_is_told():
    """dp-sim's messages (sim/messages.py, shared with the in-process loop): the pose the node reads is the hand's,
    a twist or target in another frame than base_link is refused as cartesian_controllers drop it."""
    from geometry_msgs.msg import TwistStamped
    from dp_runtime.ros.convert import ObsReader
    from dp_runtime.sim import messages
    from dp_runtime.sim.record import SimTopics
    arm, topics = GraspingArm(seed=4), SimTopics()
    sent = dict(messages.observations(arm, topics, topics.every(100.0), 0, 1234.5))
    assert set(sent) == {topics.camera, topics.wrist_camera, topics.joints, topics.eef_pose}
    segments = ({"kind": "position"}, {"kind": "rotation", "representation": "quat_xyzw"})
    from dp_runtime import layout
    read = ObsReader("pose", topics.eef_pose, segments=layout.parse(list(segments), 7, "eef"), size=7,
                     frame_id="base_link")
    stamp, v = read(sent[topics.eef_pose])
    position, quat = arm.ee_pose()
    assert stamp == 1234.5 and np.allclose(v[:3], position, atol=1e-6) and np.allclose(v[3:], quat, atol=1e-6)
    twist = TwistStamped()
    twist.header.frame_id = "base_link"
    twist.twist.linear.x, twist.twist.angular.z = 0.2, -0.5
    told = messages.command(topics, topics.twist, twist)
    assert np.allclose(told.twist, [0.2, 0.0, -0.5]) and told.gripper is None
    as_demo = SimTopics(commands=topics.twist)  # dp-demo runs dp-sim --command-topic <the node's command topic>
    assert np.allclose(messages.command(as_demo, topics.twist, twist).twist, [0.2, 0.0, -0.5])
    twist.header.frame_id = "tool0"
    with pytest.raises(ValueError, match="frame 'tool0', expected 'base_link'"):
        messages.command(topics, topics.twist, twist)


def test_the_in_process_loop_drives_the_arm_through_the_nodes_interfaces(tmp_path):
    """run_node_episodes: the task's node parameters, the node's readers and command builders, the sim's message
    handling; an untrained grasp_delta-shaped bundle (the wiring is the test): twists and gripper commands reach the
    arm at the control rate, each the runner's action as TwistStamped says it (delta * scale / period)."""
    import dataclasses
    from dp_runtime.checkpoint.layouts import arm_action
    from dp_runtime.checkpoint.native import save_checkpoint
    from dp_runtime.export import ExportOptions, export_bundle
    from dp_runtime.model import DiffusionPolicy, ImageSpec, LowDimSpec
    from dp_runtime.sim.evaluate import run_node_episodes
    from helpers.synthetic import tiny_config
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = tiny_config(images=[ImageSpec("camera", (96, 96, 3)), ImageSpec("robot0_eye_in_hand_image", (64, 64, 3))],
                      low_dims=[LowDimSpec("robot0_eef_pos", 3, layout=[{"kind": "position"}]),
                                LowDimSpec("robot0_eef_quat", 4, layout=[{"kind": "rotation",
                                                                          "representation": "quat_xyzw"}]),
                                LowDimSpec("robot0_gripper_qpos", 2, layout=[{"kind": "gripper", "size": 2}])],
                      action_dim=7, action_names=["dx", "dy", "dz", "drx", "dry", "drz", "gripper"],
                      action_layout=[s.to_json() for s in arm_action(False)], n_obs_steps=1)
    policy = DiffusionPolicy(cfg)
    ckpt = save_checkpoint(tmp_path / "p.safetensors", policy, policy, {"power": 0.75})
    bundle = export_bundle(ckpt, tmp_path / "bundle", ExportOptions(formats=("onnx",), parity_samples=1, inpaint=False))
    told = []

    class Told(GraspingArm):
        def command(self, cmd):
            told.append((self.state.t, cmd))
            super().command(cmd)
    task = dataclasses.replace(TASKS["grasp_delta"], arm=lambda seed: Told(seed=seed))
    (result,) = run_node_episodes(str(bundle), task, 1, seed=2)
    assert result["episode"] == 0 and not result["success"] and result["time"] == pytest.approx(8.0, abs=0.02)
    twists = [c.twist for _, c in told if c.twist is not None]
    grippers = [c.gripper for _, c in told if c.gripper is not None]
    assert 70 <= len(twists) == len(grippers) <= 81  # 10 Hz over 8 s, from the first chunk on
    assert all(np.all(np.isfinite(t)) for t in twists) and all(-1 <= g <= 1 for g in grippers)
    assert max(np.abs(t[:2]).max() for t in twists) <= 0.05 / 0.1 + 1e-6  # a unit delta: 0.05 m per 0.1 s
    # the inference time fixed on the sim clock (latency_s: the same result every run, for ranking): the first chunk
    # arrives that long after its observation, and a second run commands the same, to the bit
    runs = []
    for latency in (0.05, 0.05, 0.35):
        told.clear()
        run_node_episodes(str(bundle), task, 1, seed=2, latency_s=latency)
        runs.append([(t, tuple(c.twist), c.gripper) for t, c in told if c.twist is not None])
    assert len(runs[0]) >= 70 and runs[0] == runs[1]
    assert runs[2][0][0] - runs[0][0][0] == pytest.approx(0.3, abs=0.011)  # three ticks later (10 Hz)
