"""End-effector actions relative to the measured pose, through the runner (so the node and replay see it alike):
robosuite OSC deltas against the pose when the step executes, UMI's relative poses against the pose at the
chunk's observation time (never re-anchored), a planar target written into the pose held at start, and nothing
commanded before a pose was measured."""
from __future__ import annotations

import numpy as np

from dp_runtime import layout, rotations
from dp_runtime.checkpoint.layouts import arm_action
from dp_runtime.control import PolicyRunner, RunnerConfig, simulated
from dp_runtime.ros.commands import CommandContext, pose_stamped
from dp_runtime.spec import ActionSpec, ObsSpec, PolicySpec
from test_control import IMG, FakeEngine, img

EEF = layout.parse([{"kind": "position"}, {"kind": "rotation", "representation": "quat_xyzw"}], 7, "eef")
TURN = rotations.REPRESENTATIONS["axis_angle"].to_matrix(np.array([0.0, 0.0, 0.5]))


def engine_for(action_layout, rows: np.ndarray):
    """A bundle stand-in observing a camera and the eef pose, predicting ``rows`` (8, A) every chunk."""
    dim = sum(s.size for s in action_layout)
    spec = PolicySpec((ObsSpec("cam", "image", IMG), ObsSpec("eef", "low_dim", (7,), layout=EEF)),
                      ActionSpec(dim, tuple(f"a{i}" for i in range(dim)), 1, 5, layout=tuple(action_layout)),
                      horizon=8, n_obs_steps=2, obs_interval_s=0.1)

    class EeEngine(FakeEngine):
        def predict(self, history, seed=None, noise=None):
            from dp_runtime.engine.engine import Prediction
            return Prediction(np.asarray(rows, np.float32), 0.001, seed)
    EeEngine.spec = spec
    return EeEngine()


def feed(r, t, x, rotation=np.eye(3)):
    r.add("cam", t, img(0))
    r.add("eef", t, np.concatenate([[x, 0.1, 0.3], rotations.matrix_to_quat(rotation)]))


def target(r, action):
    """The PoseStamped the node would publish for this command: (position, rotation)."""
    msg = pose_stamped(action, CommandContext([], 0.0, 0.1, layout=r.spec.action.segments, reference=r.command_reference))
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), rotations.quat_to_matrix(np.array([o.x, o.y, o.z, o.w]))


CONFIG = RunnerConfig(control_rate_hz=10, inference_lead=0, chunk_transition="replace", chunk_noise="fresh")


def runner(action_layout, rows, **kw):
    """Chunks delivered on the simulated clock at once (as replay and the sim drive the runner)."""
    return PolicyRunner(engine_for(action_layout, rows), CONFIG, delivery=simulated(0.0), **kw)


def test_osc_deltas_apply_to_the_pose_measured_when_each_step_executes():
    delta = tuple(arm_action(False))
    r = runner(delta, np.tile([1.0, 0, 0, 0, 0, 1.0, -1.0], (8, 1)))  # +5 cm x and 0.5 rad about z per step
    feed(r, 0.9, 0.40)
    feed(r, 1.0, 0.40)
    r.infer(1.0)
    position, rotation = target(r, r.tick(1.0))
    assert np.allclose(position, [0.45, 0.1, 0.3]) and np.allclose(rotation, TURN)
    feed(r, 1.05, 0.42, TURN)  # the arm got 2 cm and the turn: the next delta starts there
    position, rotation = target(r, r.tick(1.1))
    assert np.allclose(position, [0.47, 0.1, 0.3]) and np.allclose(rotation, TURN @ TURN)
    # no new step due: the hold is the last command without its motion (a repeated delta would move the arm on)
    assert np.allclose(r.tick(1.13), [0, 0, 0, 0, 0, 0, -1.0])


def test_relative_actions_decode_against_the_pose_at_the_chunks_observation_time():
    rel = layout.parse([{"kind": "position", "mode": "relative"},
                        {"kind": "rotation", "representation": "rotation_6d_rows", "mode": "relative"},
                        {"kind": "gripper", "size": 1}], 10, "umi")
    rows = np.array([[0.01 * k, 0, 0, 1, 0, 0, 0, 1, 0, 0.08] for k in range(8)])  # 1 cm further per step
    r = runner(rel, rows)
    feed(r, 0.9, 0.40)
    feed(r, 1.0, 0.40, TURN)  # the pose the chunk is planned from: x 0.40, turned 0.5 rad about z
    r.infer(1.0)
    feed(r, 1.02, 0.42)  # the arm has moved since: the chunk's path must not follow it (re-anchored, it drifts)
    for k, t in enumerate((1.0, 1.1, 1.2), start=1):
        position, rotation = target(r, r.tick(t))
        step = TURN @ np.array([0.01 * k, 0, 0])  # UMI: base @ action, the step in the base's frame
        assert np.allclose(position, np.array([0.40, 0.1, 0.3]) + step) and np.allclose(rotation, TURN)


def test_a_planar_target_keeps_the_pose_held_at_start_and_a_reset_holds_anew():
    xy = layout.parse([{"kind": "position", "axes": "xy"}], 2, "pusht")
    r = runner(xy, np.tile([0.3, -0.2], (8, 1)))
    feed(r, 0.9, 0.40, TURN)
    feed(r, 1.0, 0.40, TURN)
    r.infer(1.0)
    assert np.allclose(target(r, r.tick(1.0))[0], [0.3, -0.2, 0.3])
    r.add("eef", 1.05, np.concatenate([[0.40, 0.1, 0.28], rotations.matrix_to_quat(np.eye(3))]))  # z sags
    position, rotation = target(r, r.tick(1.1))
    assert np.allclose(position, [0.3, -0.2, 0.3]) and np.allclose(rotation, TURN)  # held, not following
    r.reset()  # a new course: the pose is held anew at its first command (the hand now unturned)
    feed(r, 2.0, 0.5)
    feed(r, 2.1, 0.5)
    r.infer(2.1)
    position, rotation = target(r, r.tick(2.1))
    assert np.allclose(position, [0.3, -0.2, 0.3]) and np.allclose(rotation, np.eye(3))


def test_nothing_is_commanded_before_a_pose_was_measured():
    delta = tuple(arm_action(False))
    said = []
    r = runner(delta, np.zeros((8, 7)), warn=lambda cause, msg: said.append(msg))
    r.add("cam", 0.9, img(0))
    r.add("cam", 1.0, img(0))
    unit = np.r_[np.zeros(3), 0.0, 0.0, 0.0, 1.0]
    r.buffer.add("eef", 0.9, unit)  # in the history (as a malformed start would be) but never measured
    r.buffer.add("eef", 1.0, unit)
    r.infer(1.0)
    assert r.tick(1.0) is None
    assert any("no pose was measured yet (observations eef): not commanded" in m for m in said)


def test_a_pushed_end_effector_is_a_discontinuity():
    """The departure rule on the measured pose against the commanded one: the hand pushed away from every recent
    target (slowly: not a jump) ends the plan's authority, named and counted."""
    from dataclasses import replace
    abs_layout = tuple(arm_action(True))
    target_row = np.concatenate([[0.45, 0.1, 0.3], rotations.matrix_to_rot6d_rows(np.eye(3)), [0.0]])
    eng = engine_for(abs_layout, np.tile(target_row, (8, 1)))
    eng.spec = replace(eng.spec, action=replace(eng.spec.action, scale=(4.0,) * 3 + (1.0,) * 7))  # 0.35 -> 8.75 cm
    said = []
    r = PolicyRunner(eng, CONFIG, delivery=simulated(0.0), warn=lambda cause, msg: said.append(msg))
    feed(r, 0.9, 0.45)
    feed(r, 1.0, 0.45)
    r.infer(1.0)
    r.tick(1.0)
    feed(r, 1.05, 0.45)  # following the target: the rule is armed
    for k, t in enumerate((1.1, 1.15, 1.2, 1.25, 1.3), start=1):
        feed(r, t, 0.45 + 0.03 * k)  # pushed at 0.6 m/s (2.4 normalized units/s: under the jump rule)
        r.tick(round(t, 2))
    assert r.stats.discontinuities == 1
    assert "measured end-effector x is" in r.stats.last_discontinuity
    assert any("discontinuity at" in m and "end-effector x" in m for m in said)


def test_a_zero_quaternion_action_is_not_commanded():
    quat = layout.parse([{"kind": "position"}, {"kind": "rotation", "representation": "quat_xyzw"}], 7, "q")
    said = []
    r = runner(quat, np.tile([0.4, 0.1, 0.3, 0, 0, 0, 0], (8, 1)), warn=lambda cause, msg: said.append(msg))
    feed(r, 0.9, 0.4)
    feed(r, 1.0, 0.4)
    r.infer(1.0)
    assert r.tick(1.0) is None and r.stats.inference_errors == 1
    assert any("end-effector action not commanded: quaternion" in m for m in said)


def test_the_policy_sees_a_relative_pose_history_and_the_record_keeps_the_measured_one():
    from dataclasses import replace
    rel_obs = layout.parse([{"kind": "position", "mode": "relative"},
                            {"kind": "rotation", "representation": "quat_xyzw", "mode": "relative"}], 7, "eef")
    eng = engine_for(tuple(arm_action(True)), np.zeros((8, 10)))
    eng.spec = replace(eng.spec, observations=(eng.spec.observations[0],
                                               ObsSpec("eef", "low_dim", (7,), layout=rel_obs)))
    seen = []
    predict = eng.predict
    eng.predict = lambda history, seed=None, noise=None: seen.append(history) or predict(history, seed, noise)
    r = PolicyRunner(eng, CONFIG, delivery=simulated(0.0), keep_observations=True)
    feed(r, 0.9, 0.40)
    feed(r, 1.0, 0.45, TURN)
    rec = r.infer(1.0)
    eef = seen[0]["eef"]
    assert np.allclose(eef[-1], [0, 0, 0, 0, 0, 0, 1], atol=1e-6)  # the newest pose is the origin
    assert np.allclose(eef[0, :3], TURN.T @ np.array([-0.05, 0.0, 0.0]), atol=1e-6)  # the older one in its frame
    assert np.allclose(rec.observation.history["eef"][-1, :3], [0.45, 0.1, 0.3])  # the record: as measured


def test_umi_relative_history_in_two_keys_is_the_whole_pose_relative_to_the_newest():
    """UMI keeps the position and the rotation apart (robot0_eef_pos, robot0_eef_rot_axis_angle as rotation_6d) and
    makes the history relative as one pose: umi/real_world/real_inference_util.py, get_real_umi_obs_dict:
    pose_to_mat(concatenate([eef_pos, eef_rot_axis_angle])), convert_pose_mat_rep(pose_mat, base_pose_mat=pose_mat[-1],
    pose_rep='relative'), mat_to_pose10d, split [:3] / [3:]. The position key alone is turned by the newest rotation
    too: each key made relative on its own (pos - newest pos) is what the policy never saw."""
    from dataclasses import replace
    from dp_runtime.checkpoint.layouts import obs_layout
    from tests.helpers.framework_rotations import dp_convert_pose_mat_rep, umi_mat_to_pose10d, umi_pose_to_mat
    keys = {k: layout.parse(obs_layout(k, n, "relative"), n, k, observation=True)
            for k, n in (("robot0_eef_pos", 3), ("robot0_eef_rot_axis_angle", 6))}
    eng = engine_for(tuple(arm_action(True)), np.zeros((8, 10)))
    pose_specs = [ObsSpec(k, "low_dim", (s[-1].size,), layout=s) for k, s in keys.items()]
    eng.spec = replace(eng.spec, observations=(eng.spec.observations[0], *pose_specs))
    seen = []
    predict = eng.predict
    eng.predict = lambda history, seed=None, noise=None: seen.append(history) or predict(history, seed, noise)
    r = PolicyRunner(eng, CONFIG, delivery=simulated(0.0))
    rng = np.random.default_rng(3)
    measured = np.concatenate([rng.uniform(-0.5, 0.5, (2, 3)), rng.normal(size=(2, 3))], axis=1)  # pos, rotvec
    for t, pose in zip((0.9, 1.0), measured):
        r.add("cam", t, img(0))
        r.add("robot0_eef_pos", t, pose[:3])  # as the pose reader delivers each key: the measured pose's part
        r.add("robot0_eef_rot_axis_angle", t, rotations.matrix_to_rot6d_rows(
            rotations.REPRESENTATIONS["axis_angle"].to_matrix(pose[3:])))
    r.infer(1.0)
    pose_mat = umi_pose_to_mat(measured)
    want = umi_mat_to_pose10d(dp_convert_pose_mat_rep(pose_mat, base_pose_mat=pose_mat[-1], pose_rep="relative"))
    assert np.abs(seen[0]["robot0_eef_pos"] - want[..., :3]).max() < 1e-6
    assert np.abs(seen[0]["robot0_eef_rot_axis_angle"] - want[..., 3:]).max() < 1e-6
    assert np.abs(want[0, :3] - (measured[0, :3] - measured[1, :3])).max() > 0.05  # the rotation matters here


def test_a_dual_arm_policy_is_refused_not_merged_into_one_pose():
    """diffusion_policy's 20-D actions and UMI's robot0_* / robot1_* keys hold two end effectors; the runner reads
    one measured pose and decodes one pose per action, so it refuses them, naming what it found."""
    import pytest
    from dataclasses import replace
    from dp_runtime.checkpoint.layouts import obs_layout
    from dp_runtime.errors import CheckpointError, ConfigError
    with pytest.raises(ConfigError, match="action holds 2 end-effector positions"):
        runner(tuple(arm_action(True)) * 2, np.zeros((8, 20)))
    eng = engine_for(tuple(arm_action(True)), np.zeros((8, 10)))
    second = layout.parse(obs_layout("robot1_eef_pos", 3), 3, "robot1_eef_pos", observation=True)
    eng.spec = replace(eng.spec, observations=(*eng.spec.observations, ObsSpec("robot1_eef_pos", "low_dim", (3,),
                                                                                layout=second)))
    with pytest.raises(ConfigError, match="observations eef, robot1_eef_pos each hold an end-effector position"):
        PolicyRunner(eng, CONFIG, delivery=simulated(0.0))
    with pytest.raises(CheckpointError, match="robot0_eef_pos_wrt1: UMI's pose of one arm relative to another"):
        obs_layout("robot0_eef_pos_wrt1", 3)


def test_deltas_without_a_pose_observation_are_commanded_and_never_repeated():
    """command_interface twist publishes OSC deltas as velocities and needs no measured pose: a bundle that
    observes none still commands every step (its rotation checked), and a tick without a new step repeats none."""
    from dataclasses import replace
    delta = tuple(arm_action(False))
    eng = engine_for(delta, np.tile([1.0, 0, 0, 0, 0, 1.0, -1.0], (8, 1)))
    eng.spec = replace(eng.spec, observations=(eng.spec.observations[0],
                                               ObsSpec("state", "low_dim", (2,), names=("j1", "j2"))))
    r = PolicyRunner(eng, CONFIG, delivery=simulated(0.0))
    for t in (0.9, 1.0):
        r.add("cam", t, img(0))
        r.add("state", t, np.zeros(2, np.float32))
    r.infer(1.0)
    assert np.allclose(r.tick(1.0), [1.0, 0, 0, 0, 0, 1.0, -1.0]) and r.stats.inference_errors == 0
    assert np.allclose(r.tick(1.03), [0, 0, 0, 0, 0, 0, -1.0])  # the next step is not due: no motion


def test_after_a_discontinuity_an_absolute_pose_holds_the_measured_pose_and_the_gripper():
    """Where the robot is, not where the old plan was going: the pose hold of issue 33 (joints hold the measured
    joints), its gripper as last commanded, until a chunk from fresh observations arrives."""
    abs_layout = tuple(arm_action(True))
    target_row = np.concatenate([[0.45, 0.1, 0.3], rotations.matrix_to_rot6d_rows(np.eye(3)), [1.0]])
    r = runner(abs_layout, np.tile(target_row, (8, 1)))
    feed(r, 0.9, 0.45)
    feed(r, 1.0, 0.45)
    r.infer(1.0)
    assert np.allclose(r.tick(1.0), target_row)
    feed(r, 1.05, 0.8, TURN)  # teleported: 35 cm in 50 ms
    assert r.stats.discontinuities == 1
    held = r.tick(1.1)
    assert held is not None and held[9] == 1.0
    position, rotation = target(r, held)
    assert np.allclose(position, [0.8, 0.1, 0.3]) and np.allclose(rotation, TURN)
    feed(r, 1.15, 0.8, TURN)
    assert np.allclose(r.tick(1.2), held)  # still held: no chunk from after the break yet


def test_after_a_discontinuity_deltas_hold_still_with_the_gripper_as_commanded():
    """A zero step every tick until a chunk from fresh observations arrives: the arm stays where it is measured (a
    twist of zero, a pose target at the measured pose), and the command period stays the control period (nothing
    published left the sim's velocity controller following the last twist and the period at 200 ms)."""
    rot6d = layout.parse([{"kind": "position", "mode": "delta", "scale": 0.05},
                          {"kind": "rotation", "representation": "rotation_6d_rows", "mode": "delta"},
                          {"kind": "gripper", "size": 1}], 10, "delta6d")
    for segments, row, still in (
            (tuple(arm_action(False)), [0.2, 0, 0, 0, 0, 0.3, 1.0], [0, 0, 0, 0, 0, 0, 1.0]),
            (rot6d, [0.2, 0, 0, *rotations.matrix_to_rot6d_rows(TURN), 1.0], [0, 0, 0, 1, 0, 0, 0, 1, 0, 1.0])):
        r = runner(segments, np.tile(row, (8, 1)))
        feed(r, 0.9, 0.45)
        feed(r, 1.0, 0.45)
        r.infer(1.0)
        assert np.allclose(r.tick(1.0), row)
        feed(r, 1.05, 0.8)
        assert r.stats.discontinuities == 1
        for t in (1.1, 1.2):
            held = r.tick(t)
            assert np.allclose(held, still)
            position, rotation = target(r, held)
            assert np.allclose(position, [0.8, 0.1, 0.3]) and np.allclose(rotation, np.eye(3))


def test_ordinary_motion_under_deltas_is_no_discontinuity_and_a_teleport_is():
    """The departure rule's scale for OSC deltas is the fastest commandable speed, not the delta normalizer's (which
    made every 0.3 m/s motion a jump: 1394 discontinuities in 20 episodes of the grasp_delta demo)."""
    from dataclasses import replace
    eng = engine_for(tuple(arm_action(False)), np.tile([0.6, 0, 0, 0, 0, 0, -1.0], (8, 1)))
    eng.spec = replace(eng.spec, action=replace(eng.spec.action, scale=(1.7,) * 6 + (1.0,)))  # deltas in +-0.6
    r = PolicyRunner(eng, CONFIG, delivery=simulated(0.0))
    feed(r, 0.9, 0.45)
    feed(r, 1.0, 0.45)
    r.infer(1.0)
    x = 0.45
    for k in range(1, 30):  # 0.3 m/s, samples every 20 ms, a command every 100 ms
        x += 0.006
        feed(r, 1.0 + 0.02 * k, x)
        if k % 5 == 0:
            r.tick(round(1.0 + 0.02 * k, 2))
    assert r.stats.discontinuities == 0
    feed(r, 1.6, x + 0.3)  # teleported 30 cm in 20 ms
    assert r.stats.discontinuities == 1


def test_a_pose_in_two_keys_delivered_out_of_order_is_no_discontinuity():
    """robosuite's eef position and quaternion come from one PoseStamped through two subscriptions, delivered in
    either order: the newer message's quaternion before its position once paired the old position with the new stamp
    and read 20 ms of motion as 2 ms (2731 discontinuities in 20 episodes of the grasp demo). The jump rule compares
    positions with positions, each at its own stamp."""
    from dataclasses import replace
    eng = engine_for(tuple(arm_action(True)), np.tile([0.45, 0.1, 0.3, 1, 0, 0, 0, 1, 0, -1.0], (8, 1)))
    pos_quat = (ObsSpec("cam", "image", IMG), ObsSpec("pos", "low_dim", (3,), layout=EEF[:1]),
                ObsSpec("quat", "low_dim", (4,), layout=EEF[1:]))
    eng.spec = replace(eng.spec, observations=pos_quat, action=replace(eng.spec.action, scale=(1.5,) * 9 + (1.0,)))
    r = PolicyRunner(eng, CONFIG, delivery=simulated(0.0))
    quat = rotations.matrix_to_quat(np.eye(3))
    x = 0.45
    for k in range(20):  # 0.5 m/s (0.75 normalized units/s), samples every 20 ms, the quaternion first
        t = 1.0 + 0.02 * k
        r.add("cam", t, img(0))
        r.add("quat", t, quat)
        r.add("pos", t, np.array([x, 0.1, 0.3]))
        x += 0.01
        if k == 1:
            r.infer(t)
        if k % 5 == 0:
            r.tick(round(t, 2))
    assert r.stats.discontinuities == 0
    r.add("quat", 1.4, quat)
    r.add("pos", 1.4, np.array([x + 0.3, 0.1, 0.3]))  # teleported 30 cm in 20 ms
    assert r.stats.discontinuities == 1


def test_auto_transitions_replace_with_fresh_noise_under_per_step_deltas():
    """Holding a new chunk to the old plan's actions (inpainting, aligned noise) keeps a position continuous but a
    delta's velocity going: auto replaces with fresh noise under deltas, says so; a setting given is kept."""
    deltas = tuple(arm_action(False))
    rows = np.tile([0.2, 0, 0, 0, 0, 0, -1.0], (8, 1))
    r = PolicyRunner(engine_for(deltas, rows), RunnerConfig())
    assert (r.transition.name, r.noise.__name__) == ("replace", "fresh")
    assert r.settings_line == ("chunk_transition auto: replace (per-step delta actions); "
                               "chunk_noise auto: fresh (per-step delta actions)")
    kept = PolicyRunner(engine_for(deltas, rows), RunnerConfig(chunk_transition="blend", chunk_noise="aligned"))
    assert (kept.transition.name, kept.noise.__name__) == ("blend", "aligned")
    pose_rows = np.tile([0.45, 0.1, 0.3, 1, 0, 0, 0, 1, 0, -1.0], (8, 1))
    absolute = PolicyRunner(engine_for(tuple(arm_action(True)), pose_rows), RunnerConfig())
    assert absolute.settings_line.startswith("chunk_transition auto: blend")  # the engine stand-in cannot inpaint


def test_a_wrt_start_observation_is_seen_relative_to_the_pose_at_the_start_until_a_reset_or_a_discontinuity():
    """UMI's robot0_eef_rot_axis_angle_wrt_start: the rotation since the episode's start pose (its newest sample
    when the first history after a start was assembled); ~/reset and a discontinuity start a new episode."""
    from dataclasses import replace
    wrt = layout.parse([{"kind": "rotation", "representation": "quat_xyzw", "mode": "start"}], 4, "wrt",
                       observation=True)
    eng = engine_for(tuple(arm_action(True)), np.tile(np.concatenate([[0.45, 0.1, 0.3],
                                                                      rotations.matrix_to_rot6d_rows(np.eye(3)), [0]]),
                                                      (8, 1)))
    eng.spec = replace(eng.spec, observations=(*eng.spec.observations, ObsSpec("wrt", "low_dim", (4,), layout=wrt)))
    seen = []
    predict = eng.predict
    eng.predict = lambda history, seed=None, noise=None: seen.append(history["wrt"][-1]) or predict(history, seed,
                                                                                                   noise)
    r = PolicyRunner(eng, CONFIG, delivery=simulated(0.0))

    def at(t, x, rotation):
        feed(r, t, x, rotation)
        r.add("wrt", t, rotations.matrix_to_quat(rotation))

    def seen_rotation():
        return rotations.REPRESENTATIONS["quat_xyzw"].to_matrix(np.asarray(seen[-1], np.float64))
    at(0.9, 0.45, np.eye(3))
    at(1.0, 0.45, TURN)
    r.infer(1.0)
    assert np.allclose(seen_rotation(), np.eye(3), atol=1e-6)  # the start pose: the newest at the first chunk
    at(1.1, 0.45, TURN @ TURN)
    r.infer(1.1)
    assert np.allclose(seen_rotation(), TURN, atol=1e-6)  # turned once since the start
    r.reset()
    at(1.2, 0.45, TURN @ TURN)
    at(1.3, 0.45, TURN @ TURN)
    r.infer(1.3)
    assert np.allclose(seen_rotation(), np.eye(3), atol=1e-6)  # a new start after ~/reset
    at(1.35, 0.8, np.eye(3))  # teleported: 35 cm in 50 ms
    assert r.stats.discontinuities == 1
    at(1.45, 0.8, np.eye(3))
    at(1.55, 0.8, TURN)
    r.infer(1.55)
    assert np.allclose(seen_rotation(), np.eye(3), atol=1e-6)  # and after a discontinuity


def test_quaternion_signs_continue_within_a_course_and_start_canonical_after_a_discontinuity_or_reset():
    """q and -q are one rotation; a policy sees the sign. It continues from sample to sample (a turn through yaw pi
    keeps its hemisphere), and starts canonical (w >= 0) where the history starts: at the first sample, after
    ~/reset, and after a discontinuity, whose revealing sample was signed to continue the old course. Before,
    the sign carried what the stream went through across episodes (17 of 300 grasp demonstrations, and the node
    after a spin, saw every pose of an episode negated)."""
    r = runner(tuple(arm_action(True)), np.tile(np.r_[0.45, 0.1, 0.3, rotations.matrix_to_rot6d_rows(np.eye(3)),
                                                      1.0], (8, 1)))

    def quat(yaw):
        return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])  # continuous in yaw: w < 0 beyond pi

    def add(t, x, q):
        r.add("cam", t, img(0))
        r.add("eef", t, np.r_[x, 0.1, 0.3, q])
        return r.buffer.samples["eef"][-1][1][3:]

    assert np.allclose(add(0.9, 0.45, -quat(2.0)), quat(2.0), atol=1e-6)  # the first sample: canonical
    for k, yaw in enumerate((2.6, 3.1, 3.6)):  # through pi: the hemisphere kept, w turns negative
        assert np.allclose(add(1.0 + 0.02 * k, 0.45, rotations.matrix_to_quat(
            rotations.REPRESENTATIONS["axis_angle"].to_matrix(np.array([0, 0, yaw])))), quat(yaw), atol=1e-6)
    r.infer(1.05)
    assert r.tick(1.1) is not None
    # teleported 35 cm and turned to yaw -0.5, which the old course's hemisphere (yaw 3.6) would sign w < 0
    held = add(1.12, 0.8, quat(-0.5))
    assert r.stats.discontinuities == 1 and np.allclose(held, quat(-0.5), atol=1e-6)
    assert np.allclose(add(1.14, 0.8, quat(-0.5)), quat(-0.5), atol=1e-6)  # and the course goes on from there
    r.reset()
    assert add(1.5, 0.8, -quat(1.0))[3] >= 0
