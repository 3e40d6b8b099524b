"""The command-interface table: every entry builds its message and decodes it back (replay's recorded commands)."""
import numpy as np
import pytest

pytest.importorskip("std_msgs")

from dp_runtime.errors import ConfigError, InputError  # noqa: E402
from dp_runtime.ros.commands import COMMAND_INTERFACES, command_interface, command_to_vector  # noqa: E402

NAMES = ["j1", "j2"]


@pytest.mark.parametrize("name", sorted(COMMAND_INTERFACES))
def test_each_interface_round_trips(name):
    ci = COMMAND_INTERFACES[name]
    actions = np.array([[0.5, -1.0], [0.6, -0.9]]) if ci.per_chunk else np.array([0.5, -1.0])
    msg = ci.build(actions, NAMES, 12.5, 0.1, None)
    assert isinstance(msg, ci.message_class)
    first = actions[0] if ci.per_chunk else actions
    assert np.allclose(command_to_vector(msg, ci.msgtype, NAMES), first)
    # Early rosbag2 type names ('pkg/Type') are the same type.
    assert np.allclose(command_to_vector(msg, ci.msgtype.replace("/msg/", "/"), NAMES), first)


def test_unknown_interface_and_type_are_refused_by_name():
    with pytest.raises(ConfigError, match="command_interface must be one of .*'twist'"):
        command_interface("twist")
    with pytest.raises(InputError, match="unsupported command type geometry_msgs/msg/Twist"):
        command_to_vector(object(), "geometry_msgs/msg/Twist", NAMES)
