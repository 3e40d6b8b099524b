"""Action and observation layouts in the bundle contract: checked when read, filled by the importers from what
the checkpoint says, given by dp-export --layout where it is silent, printed by dp-inspect."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dp_runtime import layout
from dp_runtime.checkpoint import load_any
from dp_runtime.checkpoint.layouts import diffusion_policy_action, obs_layout, robomimic_action
from dp_runtime.cli import export_main, inspect_main
from dp_runtime.errors import BundleError, ConfigError
from dp_runtime.spec import BundleSpec
from tests.helpers import foreign_ckpts as fc

ROBOMIMIC_ABS_ACTION = [{"kind": "position"}, {"kind": "rotation", "representation": "rotation_6d_rows"},
                        {"kind": "gripper", "size": 1}]


def test_a_robomimic_abs_action_layout_reads_with_sizes_from_the_table():
    segs = layout.parse(ROBOMIMIC_ABS_ACTION, 10, "action")
    assert [(s.kind, s.size) for s in segs] == [("position", 3), ("rotation", 6), ("gripper", 1)]
    assert [(sl.start, sl.stop) for _, sl in layout.slices(segs)] == [(0, 3), (3, 9), (9, 10)]
    assert layout.describe(segs) == ["[0:3] position xyz", "[3:9] rotation rotation_6d_rows", "[9:10] gripper"]


@pytest.mark.parametrize("items, words", [
    (ROBOMIMIC_ABS_ACTION[:2], r"action: segments add up to 9 values .*the vector has 10"),
    ([{"kind": "rotation", "representation": "rot6d"}], r"action\[0\]: rotation representation 'rot6d'; expected one of"),
    ([{"kind": "pose"}], r"action\[0\]: kind 'pose'; expected one of joints, position"),
    ([{"kind": "gripper", "size": 10, "mode": "delta"}], r"gripper segments are absolute"),
    ([{"kind": "position", "axes": "xyz", "mode": "delta", "scale": 0}, {"kind": "values", "size": 7}],
     r"action\[0\]: scale 0; expected a positive number"),
    ([{"kind": "position", "axes": "xq"}, {"kind": "values", "size": 8}], r"position axes 'xq'"),
    ([{"kind": "rotation", "representation": "quat_xyzw", "size": 3}, {"kind": "values", "size": 7}],
     r"rotation quat_xyzw has size 3; expected 4"),
    ([{"kind": "values", "size": 10, "colour": "red"}], r"unknown key\(s\) \['colour'\]"),
    ([], r"non-empty list of segments"),
])
def test_bad_layouts_name_the_segment_and_the_fix(items, words):
    with pytest.raises(ConfigError, match=words):
        layout.parse(items, 10, "action")


def test_modes_apply_where_they_mean_something():
    """A start pose is an observation's reference (UMI's *_wrt_start); a per-step delta is an action's."""
    start = [{"kind": "rotation", "representation": "rotation_6d_rows", "mode": "start"}]
    assert layout.parse(start, 6, "obs", observation=True)[0].mode == "start"
    with pytest.raises(ConfigError, match=r"action: mode 'start' on an action; expected one of absolute, delta"):
        layout.parse(start, 6, "action")
    with pytest.raises(ConfigError, match=r"mode 'delta' on an observation; expected one of absolute, relative, start"):
        layout.parse([{"kind": "position", "mode": "delta"}], 3, "obs", observation=True)


def test_importer_rules_follow_the_frameworks_names():
    assert obs_layout("robot0_eef_quat", 4) == [{"kind": "rotation", "size": 4, "representation": "quat_xyzw"}]
    assert obs_layout("robot0_gripper_qpos", 2) == [{"kind": "gripper", "size": 2}]
    assert [s["kind"] for s in obs_layout("robot_eef_pose", 6)] == ["position", "rotation"]
    assert obs_layout("agent_pos", 2) == [] and obs_layout("robot0_eef_pos", 2) == []  # no rule: no layout
    keys = list(fc.ROBOMIMIC_ABS_LOW)
    assert [s.get("representation") for s in diffusion_policy_action(20, keys, True, "rotation_6d")] == \
        [None, "rotation_6d_rows", None] * 2
    delta = diffusion_policy_action(7, keys, False, None)
    assert [(s["kind"], s.get("mode"), s.get("scale")) for s in delta] == \
        [("position", "delta", 0.05), ("rotation", "delta", 0.5), ("gripper", None, None)]
    assert "output_max" in delta[0]["assumed"]
    assert "abs_action not in the config" in diffusion_policy_action(10, keys, None, None)[0]["assumed"]
    assert diffusion_policy_action(10, keys, False, None) == []  # the flag and the dimension disagree
    assert [s["axes"] for s in diffusion_policy_action(2, ["robot_eef_pose"], None, None)] == ["xy"]  # real PushT
    assert diffusion_policy_action(2, ["agent_pos"], None, None) == []
    assert [s.get("representation") for s in robomimic_action(
        ["action_dict/abs_pos", "action_dict/abs_rot_6d", "action_dict/gripper"], 10, [])] == \
        [None, "rotation_6d_rows", None]
    assert robomimic_action(["actions"], 7, ["robot0_eef_pos"])[0]["mode"] == "delta"
    assert robomimic_action(["action/pos", "action/gripper"], 2, ["robot0_eef_pos"]) == []


def abs_checkpoint(tmp_path, abs_action=True):
    policy = fc.randomize(fc.dp_source(hybrid=True, low=fc.ROBOMIMIC_ABS_LOW, action_dim=10), 0)
    cfg = fc.dp_cfg(True, low=fc.ROBOMIMIC_ABS_LOW, action_dim=10,
                    task={"abs_action": abs_action, "dataset": {"rotation_rep": "rotation_6d"}})
    return fc.write_dp(tmp_path / "lift_image_abs.ckpt", policy, hybrid=True, cfg=cfg)


def test_a_diffusion_policy_image_abs_checkpoint_exports_its_layout_and_dp_inspect_prints_it(tmp_path, capsys):
    path = abs_checkpoint(tmp_path)
    assert export_main([str(path), "-o", str(tmp_path / "b"), "--trust-pickle", "--formats", "onnx",
                        "--no-inpaint", "--parity-samples", "1"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["action"]["segments"] == [{"kind": "position", "size": 3, "axes": "xyz"},
                                              {"kind": "rotation", "size": 6, "representation": "rotation_6d_rows"},
                                              {"kind": "gripper", "size": 1}]
    obs = {o["key"]: o.get("segments") for o in manifest["observations"]}
    assert obs["robot0_eef_quat"] == [{"kind": "rotation", "size": 4, "representation": "quat_xyzw"}]
    spec = BundleSpec.from_json(manifest)
    assert spec.policy.action.layout[1].representation == "rotation_6d_rows"
    capsys.readouterr()
    assert inspect_main([str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "[3:9] rotation rotation_6d_rows" in out and "[0:4] rotation quat_xyzw" in out


def test_dp_export_layout_file_overrides_and_is_checked(tmp_path, capsys):
    path = abs_checkpoint(tmp_path, abs_action=None)
    f = tmp_path / "layout.yaml"
    f.write_text("action:\n  - {kind: position}\n  - {kind: rotation, representation: rotation_6d_cols}\n"
                 "  - {kind: gripper, size: 1}\nobservations:\n  robot0_gripper_qpos: [{kind: values, size: 2}]\n")
    ck = load_any(path, trust_pickle=True)
    assert "abs_action not in the config" in ck.config.action_layout[0]["assumed"]
    assert export_main([str(path), "-o", str(tmp_path / "b"), "--trust-pickle", "--formats", "onnx",
                        "--no-inpaint", "--parity-samples", "1", "--layout", str(f)]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["action"]["segments"][1]["representation"] == "rotation_6d_cols"
    assert {o["key"]: o.get("segments") for o in manifest["observations"]}["robot0_gripper_qpos"] == \
        [{"kind": "values", "size": 2}]
    f.write_text("action:\n  - {kind: position}\n  - {kind: gripper, size: 1}\n")
    capsys.readouterr()
    assert export_main([str(path), "-o", str(tmp_path / "c"), "--trust-pickle", "--layout", str(f)]) != 0
    assert "action layout: segments add up to 4 values" in capsys.readouterr().err
    f.write_text("observations:\n  wrist_pose: [{kind: position}]\n")
    assert export_main([str(path), "-o", str(tmp_path / "c"), "--trust-pickle", "--layout", str(f)]) != 0
    assert "['wrist_pose'] are not low-dim inputs of this policy" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_manifest_with_a_bad_layout_is_refused_by_name(tmp_path):
    path = abs_checkpoint(tmp_path)
    assert export_main([str(path), "-o", str(tmp_path / "b"), "--trust-pickle", "--formats", "onnx",
                        "--no-inpaint", "--parity-samples", "1"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["action"]["segments"][1]["representation"] = "quat_xyzw"
    with pytest.raises(BundleError, match=r"manifest.json: action segments\[1\]: rotation quat_xyzw has size 6"):
        BundleSpec.from_json(manifest)
    # a bundle without segments (every bundle before them) reads as joint values
    del manifest["action"]["segments"]
    spec = BundleSpec.from_json(manifest)
    assert spec.policy.action.layout == () and layout.is_joint_space(spec.policy.action.segments)


def test_the_readme_end_effector_yaml_wires_an_image_abs_bundle(tmp_path):
    """The README's parameter file for a lift_image_abs bundle (at most 20 lines) opens the control loop: both
    eef keys read the TCP PoseStamped, the gripper its joints, the pose interface accepts the action and the
    gripper value goes to its own controller."""
    from pathlib import Path

    from dp_runtime.ros.params import load_params_file
    from dp_runtime.ros.runtime import open_runtime
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("A diffusion_policy `lift_image_abs` checkpoint")[1].split("```yaml\n")[1].split("```")[0]
    assert len(block.strip().splitlines()) <= 20
    path = abs_checkpoint(tmp_path)
    assert export_main([str(path), "-o", str(tmp_path / "b"), "--trust-pickle", "--formats", "onnx",
                        "--no-inpaint", "--parity-samples", "1"]) == 0
    (tmp_path / "policy.yaml").write_text(block)
    p, flat = load_params_file(tmp_path / "policy.yaml", bundle=str(tmp_path / "b"))
    said = []
    rt = open_runtime(p, lambda name, default: flat.get(name, default), info=said.append)
    topics = {t.key: t for t in rt.topics}
    assert topics["robot0_eef_pos"].type == topics["robot0_eef_quat"].type == "pose"
    assert topics["robot0_eef_pos"].topic == "/tcp_pose_broadcaster/pose" and topics["robot0_eef_quat"].frame_id == "base_link"
    assert topics["robot0_gripper_qpos"].type == "joint_state"
    assert rt.interface.name == "pose" and rt.command_context(1.0).frame_id == "base_link"
    assert [o.columns for o in rt.outputs] == [(9,)] and not any("not published" in line for line in said)


def test_replay_reads_one_tcp_pose_topic_into_both_eef_keys(tmp_path):
    """robosuite's eef position and quaternion are two keys of the policy and one PoseStamped topic of the robot:
    replay (a real rosbag2 MCAP) feeds both from it, as the node's two subscriptions do."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from dp_runtime.replay.cli import main as replay_main
    path = abs_checkpoint(tmp_path)
    assert export_main([str(path), "-o", str(tmp_path / "b"), "--trust-pickle", "--formats", "onnx",
                        "--no-inpaint", "--parity-samples", "1"]) == 0
    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    types = {"/image": "sensor_msgs/msg/Image", "/tcp_pose": "geometry_msgs/msg/PoseStamped",
             "/joint_states": "sensor_msgs/msg/JointState", "/commands": "std_msgs/msg/Float64MultiArray"}
    with Writer(tmp_path / "bag", version=8, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {topic: w.add_connection(topic, kind, typestore=ts) for topic, kind in types.items()}
        for i in range(60):  # 3 s at 20 Hz
            t = 1_700_000_000.0 + i * 0.05
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
                sec=int(t), nanosec=int(round((t - int(t)) * 1e9)) % 1_000_000_000), frame_id="base_link")
            msgs = {
                "/image": T["sensor_msgs/msg/Image"](header=header, height=fc.IMG, width=fc.IMG, encoding="rgb8",
                                                     is_bigendian=0, step=fc.IMG * 3,
                                                     data=np.full(fc.IMG * fc.IMG * 3, 90, np.uint8)),
                "/tcp_pose": T["geometry_msgs/msg/PoseStamped"](header=header, pose=T["geometry_msgs/msg/Pose"](
                    position=T["geometry_msgs/msg/Point"](x=0.4 + 0.01 * i, y=0.0, z=0.3),
                    orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=1.0, z=0.0, w=0.0))),
                "/joint_states": T["sensor_msgs/msg/JointState"](header=header, name=["l", "r"],
                                                                 position=np.array([0.02, -0.02]),
                                                                 velocity=np.zeros(0), effort=np.zeros(0)),
                # the 10-D commands the robot executed (pos, rotation_6d rows of the identity, gripper)
                "/commands": T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](
                    dim=[], data_offset=0), data=np.array([0.4, 0, 0.3, 1, 0, 0, 0, 1, 0, 0.0])),
            }
            for topic, msg in msgs.items():
                w.write(conns[topic], int(t * 1e9), ts.serialize_cdr(msg, types[topic]))
    (tmp_path / "policy.yaml").write_text(
        "policy_node:\n  ros__parameters:\n    obs:\n      image: {topic: /image}\n"
        "      robot0_eef_pos: {topic: /tcp_pose, frame_id: base_link}\n"
        "      robot0_eef_quat: {topic: /tcp_pose, frame_id: base_link}\n"
        "      robot0_gripper_qpos: {topic: /joint_states, joint_names: [l, r]}\n")
    assert replay_main([str(tmp_path / "bag"), "--bundle", str(tmp_path / "b"), "--config",
                        str(tmp_path / "policy.yaml"), "--out", str(tmp_path / "report"), "--no-progress",
                        "--recorded-topic", "/commands"]) == 0
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert m["chunks"] > 5 and m["messages"]["invalid_total"] == 0
    assert m["messages"]["used"] == 60 * 4  # the pose counted once per key it feeds
    # the report's errors per segment, in metres and radians (not one MSE over mixed units)
    seg = m["segment_error"]
    assert seg["0:position"]["unit"] == "m" and seg["1:rotation rotation_6d_rows"]["unit"] == "rad"
    assert 0 <= seg["1:rotation rotation_6d_rows"]["max"] <= np.pi and seg["0:position"]["count"] == m["compared"] > 0


def test_umi_pose_repr_makes_the_eef_history_and_the_actions_relative():
    """UMI's task config says pose_repr: {obs_pose_repr: relative, action_pose_repr: relative}; its rotation is
    stored as rotation_6d under the name robot0_eef_rot_axis_angle (shape_meta rotation_rep)."""
    obs = obs_layout("robot0_eef_rot_axis_angle", 6, "relative")
    assert obs == [{"kind": "rotation", "size": 6, "representation": "rotation_6d_rows", "mode": "relative"}]
    assert obs_layout("robot0_eef_pos", 3, "relative")[0]["mode"] == "relative"
    assert obs_layout("robot0_gripper_width", 1, "relative") == [{"kind": "gripper", "size": 1}]
    # the rotation since the episode's start (get_real_umi_obs_dict's *_wrt_start): relative to the start pose, not
    # to the newest, whatever obs_pose_repr says
    assert obs_layout("robot0_eef_rot_axis_angle_wrt_start", 6, "relative") == [
        {"kind": "rotation", "size": 6, "representation": "rotation_6d_rows", "mode": "start"}]
    action = diffusion_policy_action(10, ["robot0_eef_pos", "robot0_eef_rot_axis_angle"], None, None, "relative")
    assert [(s["kind"], s.get("mode")) for s in action] == [("position", "relative"), ("rotation", "relative"),
                                                             ("gripper", None)]
    assert "assumed" not in action[0]  # the checkpoint says it


def test_a_umi_shaped_checkpoint_imports_relative_layouts(tmp_path):
    low = {"robot0_eef_pos": 3, "robot0_eef_rot_axis_angle": 6, "robot0_gripper_width": 1}
    policy = fc.randomize(fc.dp_source(hybrid=True, low=low, action_dim=10), 0)
    cfg = fc.dp_cfg(True, low=low, action_dim=10,
                    task={"pose_repr": {"obs_pose_repr": "relative", "action_pose_repr": "relative"}})
    ck = load_any(fc.write_dp(tmp_path / "umi.ckpt", policy, hybrid=True, cfg=cfg), trust_pickle=True)
    spec = ck.config.policy_spec()
    obs = {o.key: o.layout for o in spec.observations if o.kind == "low_dim"}
    assert obs["robot0_eef_rot_axis_angle"][0].representation == "rotation_6d_rows"
    assert {s.mode for s in obs["robot0_eef_pos"] + obs["robot0_eef_rot_axis_angle"]} == {"relative"}
    assert [s.mode for s in spec.action.layout] == ["relative", "relative", "absolute"]
