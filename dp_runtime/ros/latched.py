"""A latched string topic read once: the URDF robot_state_publisher publishes on /robot_description."""
from __future__ import annotations

import time

from ..errors import ConfigError

ROBOT_DESCRIPTION_WAIT_S = 10.0  # at configure: robot_state_publisher may start after the policy node


def latched_string(context, topic: str, timeout_s: float) -> str:
    """The std_msgs/String latched (transient local) on ``topic``, waited for up to ``timeout_s``; a node and
    executor of its own in ``context``, so it works while the caller's executor is spinning (a lifecycle
    node's configure callback)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    node = rclpy.create_node("dp_runtime_robot_description", context=context, start_parameter_services=False)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    got: list[str] = []
    node.create_subscription(String, topic, lambda m: got.append(m.data),
                             QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                        reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + timeout_s
    try:
        while not got and time.monotonic() < deadline and context.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
    if not got:
        raise ConfigError(f"no URDF on {topic} within {timeout_s:g} s (robot_state_publisher latches it there; or "
                          "set obs.<key>.urdf to the robot's URDF file)")
    return got[0]
