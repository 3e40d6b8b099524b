"""An end-effector policy on the node over real DDS: PoseStamped observations in, PoseStamped targets out, equal
to the bundle's actions decoded as diffusion_policy's *_abs convention says."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from dp_runtime import rotations  # noqa: E402
from dp_runtime.checkpoint.layouts import arm_action  # noqa: E402
from dp_runtime.checkpoint.native import save_checkpoint  # noqa: E402
from dp_runtime.engine import load_bundle  # noqa: E402
from dp_runtime.export import ExportOptions, export_bundle  # noqa: E402
from dp_runtime.model import DiffusionPolicy, LowDimSpec  # noqa: E402
from dp_runtime.pose_action import decode  # noqa: E402
from helpers.sensor_publisher import EEF_POSE, SCENE_TARGET  # noqa: E402
from helpers.synthetic import render_dot, tiny_config  # noqa: E402
from test_node import commanded, domain, run  # noqa: E402,F401

EEF = [{"kind": "position"}, {"kind": "rotation", "representation": "quat_xyzw"}]


@pytest.fixture(scope="module")
def ee_bundle(tmp_path_factory):
    """A *_abs-shaped policy (camera + eef pose in, 10-D pos/rot6d/gripper out); its weights are untrained: the
    test is the wiring and the decoding, which equal the engine's actions whatever they are."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = tiny_config(low_dims=[LowDimSpec("eef", 7, topic="/eef_pose", layout=EEF)], action_dim=10,
                      action_names=[f"a{i}" for i in range(10)],
                      action_layout=[s.to_json() for s in arm_action(True)])
    policy = DiffusionPolicy(cfg)
    d = tmp_path_factory.mktemp("ee")
    ckpt = save_checkpoint(d / "ee.safetensors", policy, policy, {"power": 0.75})
    return export_bundle(ckpt, d / "bundle", ExportOptions(formats=("onnx",), parity_samples=1, inpaint=False))


def test_pose_in_pose_out_over_dds(tmp_path, ee_bundle, domain):
    """...and the gripper through its own output (command_outputs), the same action's last value."""
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64MultiArray
    grippers = []

    def listen(col, t0):
        col.node.create_subscription(Float64MultiArray, "/test/gripper", lambda m: grippers.append(list(m.data)), 50)
    col, log, alive, t0, rc = run(
        tmp_path, ee_bundle, domain, {"command_interface": "pose", "command_topic": "/test/target",
                                      "command_frame_id": "base_link", "obs": {"eef": {"frame_id": "base_link"}},
                                      "command_outputs": ["gripper:float64_multi_array:/test/gripper"]},
        ["--rate", "30", "--pose"], 5.0, command_type=PoseStamped, topic="/test/target", during=listen)
    assert alive and rc == 0, log
    assert "not published" not in log  # the gripper goes out on its own topic
    rel = np.array([t for t, _ in col.commands]) - t0
    commanded(rel, 1.5, 4.5)
    engine = load_bundle(ee_bundle)
    eef = np.array([*EEF_POSE[0], *EEF_POSE[1]], np.float32)
    obs = {"camera": np.stack([render_dot(SCENE_TARGET, 24)] * 2), "eef": np.stack([eef] * 2)}
    layout = engine.spec.action.segments
    actions = [a for k in range(len(col.commands) + 5) for a in engine.executed_slice(engine.predict(obs, seed=k).actions)]
    poses = [decode(a, layout, None).pose for a in actions]
    assert len(grippers) >= 0.8 * len(col.commands) > 0
    assert all(len(g) == 1 and any(abs(g[0] - a[9]) < 1e-4 for a in actions) for g in grippers)
    for _, msg in col.commands:
        assert msg.header.frame_id == "base_link"
        p, o = msg.pose.position, msg.pose.orientation
        position = np.array([p.x, p.y, p.z])
        m = rotations.quat_to_matrix(np.array([o.x, o.y, o.z, o.w]))
        assert any(np.abs(position - c.position).max() < 1e-4 and np.abs(m - c.rotation).max() < 1e-4
                   for c in poses), position


def test_the_urdf_latched_on_robot_description_is_read_and_its_absence_named(domain):
    """What robot_state_publisher does: the URDF on /robot_description, transient local, published before the
    reader starts (dp-sim's grasp arm publishes its own so)."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from dp_runtime.errors import ConfigError
    from dp_runtime.ros.latched import latched_string
    from dp_runtime.ros.side_node import SideNode
    from dp_runtime.sim.grasp import GraspingArm
    urdf = GraspingArm().urdf()
    publisher = SideNode("test_robot_state_publisher", domain)
    publisher.node.create_publisher(String, "/test/robot_description", QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)).publish(
        String(data=urdf))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        assert latched_string(context, "/test/robot_description", 20.0) == urdf
        with pytest.raises(ConfigError, match="no URDF on /test/nobody within 1 s"):
            latched_string(context, "/test/nobody", 1.0)
    finally:
        rclpy.shutdown(context=context)
        publisher.close()
