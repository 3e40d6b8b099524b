"""End-effector and plain-vector observations: PoseStamped read into the bundle's position and rotation
segments (quaternions without sign flips, frames checked), Float64/32MultiArray timed on receipt, and the
node's topic types defaulted from the bundle's layout."""
from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from dp_runtime import layout, rotations
from dp_runtime.control.observation_buffer import ObservationBuffer
from dp_runtime.errors import ConfigError, InputError, ShapeError
from dp_runtime.ros.convert import ObsReader
from dp_runtime.ros.params import resolve_obs_topics
from dp_runtime.spec import ObsSpec

EEF = layout.parse([{"kind": "position"}, {"kind": "rotation", "representation": "quat_xyzw"}], 7, "eef")


def pose_msg(position, quat_xyzw, frame="base_link", stamp=(12, 500_000_000)) -> PoseStamped:
    m = PoseStamped()
    m.header.frame_id = frame
    m.header.stamp.sec, m.header.stamp.nanosec = stamp
    m.pose.position.x, m.pose.position.y, m.pose.position.z = map(float, position)
    m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z, m.pose.orientation.w = map(float, quat_xyzw)
    return m


def quat(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])  # continuous in yaw: w < 0 beyond pi


def test_pose_into_position_and_a_canonical_quaternion():
    """The reader writes what the message says, the quaternion canonical (w >= 0) whichever sign the driver sent;
    its continuity is the history's (ObservationBuffer)."""
    read = ObsReader("pose", "/tcp_pose", segments=EEF, size=7, frame_id="base_link")
    stamp, v = read(pose_msg([0.4, -0.1, 0.3], quat(3.1)))  # near pi: w is small, its sign fragile
    assert stamp == 12.5 and v.dtype == np.float32
    assert np.allclose(v[:3], [0.4, -0.1, 0.3]) and np.allclose(v[3:], quat(3.1), atol=1e-7)
    _, v2 = read(pose_msg([0.4, -0.1, 0.3], -quat(3.1)))  # the same rotation with the other sign
    assert np.allclose(v2[3:], quat(3.1), atol=1e-7)


def test_quaternions_continue_in_the_history_and_start_canonical():
    """q and -q are one rotation; a policy sees the sign. In the history it continues from sample to sample (a
    turn through yaw pi keeps its hemisphere) and starts canonical where the history starts: the first sample, and
    after a discontinuity drops the older ones (the samples kept re-signed as if the stream began with them; one
    key's own gap: dp-dataset's episode starts), so the sign never carries what the stream went through before."""
    buf = ObservationBuffer({}, {"eef": 7}, 1, 0.1, 1.0, layouts={"eef": EEF})

    def add(t, yaw, sign=1.0):
        buf.add("eef", t, np.r_[0.4, 0.0, 0.3, sign * quat(yaw)])
        return buf.samples["eef"][-1][1][3:]

    assert np.allclose(add(1.0, 2.0, -1.0), quat(2.0), atol=1e-6)  # the first sample: canonical
    for k, yaw in enumerate((2.6, 3.1, 3.6, 4.4)):  # through pi, as a driver sends it: canonical on both sides
        assert np.allclose(add(1.1 + 0.1 * k, yaw, 1.0 if yaw < np.pi else -1.0), quat(yaw), atol=1e-6)
    assert buf.assemble(1.5).history["eef"][-1][6] < 0  # the policy sees w < 0 beyond pi, as the course went on
    buf.drop_before(1.4)  # a discontinuity: the sample kept (yaw 4.4, w < 0) starts the stream anew
    assert np.allclose(buf.samples["eef"][0][1][3:], -quat(4.4), atol=1e-6)
    assert np.allclose(add(1.6, 4.6), -quat(4.6), atol=1e-6)  # and the course goes on from there
    buf.drop_before(3.0, "eef")  # this key's own gap (a new episode in a bag)
    assert np.allclose(add(3.0, 2.0 + 2 * np.pi), quat(2.0), atol=1e-6)
    buf.reset()
    assert add(4.0, 3.6)[3] >= 0


def test_pose_into_rotation_6d_rows_axis_angle_and_a_planar_position():
    segs = layout.parse([{"kind": "position", "axes": "xy"}, {"kind": "rotation", "representation": "rotation_6d_rows"},
                         {"kind": "rotation", "representation": "axis_angle"}], 11, "eef")
    rv = np.array([0.3, -0.2, 0.9])
    _, v = ObsReader("pose", "/p", segments=segs, size=11)(pose_msg([1, 2, 3], rotations.axis_angle_to_quat(rv)))
    m = rotations.REPRESENTATIONS["axis_angle"].to_matrix(rv)
    assert np.allclose(v[:2], [1, 2]) and np.allclose(v[2:8], m[:2].reshape(6), atol=1e-6)
    assert np.allclose(v[8:], rv, atol=1e-6)


@pytest.mark.parametrize("msg, error, words", [
    (pose_msg([0, 0, 0], [0, 0, 0, 1], frame="world"), InputError, r"/p: pose in frame 'world', expected 'base_link'"),
    (pose_msg([0, 0, 0], [0, 0, 0, 0]), InputError, r"quaternion .* is zero or not finite"),
    (pose_msg([np.nan, 0, 0], [0, 0, 0, 1]), InputError, r"non-finite position"),
    (pose_msg([0, 0, 0], [0, 0, 0, 1], stamp=(0, 0)), InputError, r"header stamp is zero"),
])
def test_bad_poses_are_refused_by_name(msg, error, words):
    with pytest.raises(error, match=words):
        ObsReader("pose", "/p", segments=EEF, size=7, frame_id="base_link")(msg)


@pytest.mark.parametrize("cls, kind", [(Float64MultiArray, "float64_multi_array"),
                                       (Float32MultiArray, "float32_multi_array")])
def test_plain_vectors_are_timed_on_receipt(cls, kind):
    read = ObsReader(kind, "/keypoints", size=4)
    stamp, v = read(cls(data=[1.0, 2.0, 3.0, 4.0]), received=7.25)
    assert stamp == 7.25 and v.tolist() == [1, 2, 3, 4] and v.dtype == np.float32
    with pytest.raises(ShapeError, match="/keypoints: 3 values, the policy's observation has 4"):
        read(cls(data=[1.0, 2.0, 3.0]), received=7.3)
    with pytest.raises(InputError, match="non-finite values at \\[1\\]"):
        read(cls(data=[1.0, float("nan"), 3.0, 4.0]), received=7.3)
    with pytest.raises(InputError, match="no header and the node has no clock yet"):
        read(cls(data=[1.0, 2.0, 3.0, 4.0]), received=0.0)


def test_topic_types_default_from_the_layout_and_pose_needs_a_pose_layout():
    obs = (ObsSpec("eef", "low_dim", (7,), layout=EEF),
           ObsSpec("gripper", "low_dim", (2,), names=("finger_l", "finger_r"),
                   layout=layout.parse([{"kind": "gripper", "size": 2}], 2, "g")),
           ObsSpec("keypoints", "low_dim", (4,), layout=layout.parse([{"kind": "values", "size": 4}], 4, "k")),
           ObsSpec("q", "low_dim", (2,), names=("j1", "j2")))
    topics = resolve_obs_topics(lambda name, default: default, obs)
    assert [t.type for t in topics] == ["pose", "joint_state", "float64_multi_array", "joint_state"]
    assert topics[0].joint_names == [] and topics[3].joint_names == ["j1", "j2"]
    with pytest.raises(ConfigError, match=r"obs\.q\.type pose: the bundle's 'q' is joints \[j1, j2\], not positions"):
        resolve_obs_topics(lambda name, default: "pose" if name == "obs.q.type" else default, obs[3:])
    frame = resolve_obs_topics(lambda name, default: "tool0_base" if name == "obs.eef.frame_id" else default, obs[:1])
    with pytest.raises(InputError, match="expected 'tool0_base'"):
        frame[0].reader()(pose_msg([0, 0, 0], [0, 0, 0, 1]))


URDF = __import__("pathlib").Path(__file__).parent / "fixtures" / "arm6.urdf"
ARM = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]


def urdf_fk(q: np.ndarray) -> np.ndarray:
    """The fixture's chain composed by hand from its origins (URDF rpy = extrinsic x-y-z) and z-axis joints."""
    import xml.etree.ElementTree as ET
    pose = np.eye(4)
    joints = {j.get("name"): j for j in ET.parse(URDF).getroot().iter("joint")}
    for name in ARM + ["flange_tool0"]:
        o = joints[name].find("origin")
        step = np.eye(4)
        step[:3, :3] = rotations.REPRESENTATIONS["euler_xyz"].to_matrix(np.array(o.get("rpy").split(), float))
        step[:3, 3] = np.array(o.get("xyz").split(), float)
        if name in ARM:
            turn = np.eye(4)
            turn[:3, :3] = rotations.REPRESENTATIONS["axis_angle"].to_matrix(np.array([0, 0, q[ARM.index(name)]]))
            step = step @ turn
        pose = pose @ step
    return pose


def joint_state(q, names=ARM, stamp=(5, 0)):
    from sensor_msgs.msg import JointState
    m = JointState(name=list(names) + ["finger_joint"], position=[float(v) for v in q] + [0.01])
    m.header.stamp.sec, m.header.stamp.nanosec = stamp
    return m


def test_fk_pose_from_joint_states_equals_the_chain_composed_by_hand():
    from dp_runtime.kinematics import Kinematics
    kin = Kinematics(URDF.read_text(), "tool0")
    assert kin.joint_names == ARM  # the chain's movable joints in order; the finger after tool0 is not in it
    segs = layout.parse([{"kind": "position"}, {"kind": "rotation", "representation": "rotation_6d_rows"}], 9, "eef")
    read = ObsReader("fk", "/joint_states", segments=segs, size=9, kinematics=kin)
    rng = np.random.default_rng(0)
    for q in rng.uniform(-3, 3, size=(50, 6)):
        stamp, v = read(joint_state(q[::-1], ARM[::-1]))  # any order in the message, matched by name
        want = urdf_fk(q)
        assert stamp == 5.0
        assert np.abs(v[:3] - want[:3, 3]).max() < 1e-6 and np.abs(v[3:] - want[:2, :3].reshape(6)).max() < 1e-6


def test_fk_refuses_a_urdf_without_the_link_and_a_message_without_the_joints():
    from dp_runtime.kinematics import Kinematics
    with pytest.raises(ConfigError, match="the URDF has no tip link 'tcp'; its links: base_link, shoulder_link"):
        Kinematics(URDF.read_text(), "tcp", where="obs.eef.urdf")
    with pytest.raises(ConfigError, match="not a URDF"):
        Kinematics("<robot", "tool0")
    obs = (ObsSpec("eef", "low_dim", (7,), layout=EEF),)
    params = {"obs.eef.type": "fk", "obs.eef.urdf": str(URDF)}
    topic = resolve_obs_topics(lambda name, default: params.get(name, default), obs)[0]
    with pytest.raises(InputError, match=r"missing joint\(s\) \['wrist_3_joint'\]"):
        topic.reader()(joint_state(np.zeros(5), ARM[:5]))
    with pytest.raises(ConfigError, match="obs.eef.urdf: type fk without a URDF file reads /robot_description, "
                                          "which only the node can"):
        resolve_obs_topics(lambda name, default: {"obs.eef.type": "fk"}.get(name, default), obs)
    # the node's way: the URDF latched on the topic (read by ros/latched.py; over DDS in test_ee_node.py)
    asked = []
    topic = resolve_obs_topics(lambda name, default: {"obs.eef.type": "fk", "obs.eef.robot_description": "/arm/urdf"}
                               .get(name, default), obs, lambda t: asked.append(t) or URDF.read_text())[0]
    assert asked == ["/arm/urdf"] and topic.kinematics.joint_names == list(ARM)
