"""policy_node as ROS 2 tools start and stop it: refusals, parameter types, signals, the lifecycle node.

Each node is its own process (as `ros2 run` starts it) with a private ROS_DOMAIN_ID; what is left to
a real `ros2 launch` (the launch file itself) is checked in test_launch_config.py.
"""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from helpers.ros_harness import (Collector, domain_id, ros_env, start_node, start_publisher, wait_for,  # noqa: E402
                                 write_params)
from test_node import node_params  # noqa: E402


def _run_to_exit(tmp_path, name, params, *extra, domain_offset: int = 11):
    pf = tmp_path / f"{name}.yaml"
    if isinstance(params, str):
        pf.write_text(params)
    else:
        write_params(pf, params)
    return start_node(pf, ros_env(domain_id() + domain_offset), tmp_path / f"{name}.log", *extra)


def test_bad_parameters_refuse_with_one_fatal_line_and_no_traceback(tmp_path, tiny_bundle):
    cases = {  # name -> (parameter file, the words the FATAL line must carry)
        "broken_yaml": ("policy_node:\n  ros__parameters:\n    control_rate_hz: [1,\n", "cannot read the ROS arguments"),
        "typed": (node_params(tiny_bundle, control_rate_hz="fast"), "'control_rate_hz' must be a number"),
        "zero_rate": (node_params(tiny_bundle, control_rate_hz=0), "control_rate_hz must be > 0"),
        "limits": (node_params(tiny_bundle, action_lower=[1.0, 2.0, 3.0]), "action_lower has 3 values"),
        "interface": (node_params(tiny_bundle, command_interface="velocity"), "command_interface must be one of"),
        "no_bundle_dir": (node_params(tmp_path / "nowhere"), "does not exist"),
    }
    # each in its own domain: six participants starting and ending at once never discover each other
    # (sharing one, a node once died with SIGSEGV before its first log line on a loaded CI machine)
    procs = {name: _run_to_exit(tmp_path, name, params, domain_offset=11 + i)
             for i, (name, (params, _)) in enumerate(cases.items())}
    for name, proc in procs.items():
        proc.p.wait(300)  # six nodes start at once: generous on a loaded 2-core machine
        rc, log = proc.stop(), proc.text()
        assert rc == 1, (name, rc, log)
        fatal = [line for line in log.splitlines() if "FATAL" in line]
        assert len(fatal) == 1 and cases[name][1] in fatal[0], (name, log)
        assert "Traceback" not in log and "Exception" not in log.replace("BundleError", ""), (name, log)


def test_whole_numbers_where_decimals_are_meant(tmp_path, tiny_bundle):
    """control_rate_hz: 50, max_obs_age: 1, action_lower: [-3, -3], -p control_rate_hz:=50 all start."""
    params = node_params(tiny_bundle, control_rate_hz=50, max_obs_age=1, action_lower=[-3, -3],
                         action_upper=[3, 3], execution_latency=0)
    node = _run_to_exit(tmp_path, "ints", params, "-p", "control_rate_hz:=50", "-p", "diagnostics_period:=1")
    try:
        assert wait_for(lambda: "running" in node.text() or node.p.poll() is not None, 60), node.text()
        assert node.p.poll() is None, node.text()
        assert "50.0 Hz" in node.text()
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_every_signal_ends_the_node_cleanly(tmp_path, tiny_bundle, backend):
    """SIGTERM, SIGINT, and two SIGINTs in quick succession, while inference runs: exit 0, no traceback."""
    ways = {"sigterm": [signal.SIGTERM], "sigint": [signal.SIGINT], "double_sigint": [signal.SIGINT, signal.SIGINT]}
    runs = {}
    for i, (name, _) in enumerate(ways.items()):
        env = ros_env(domain_id() + 20 + i + (3 if backend == "torchscript" else 0))
        pf = write_params(tmp_path / f"{name}.yaml", node_params(tiny_bundle, backend=backend))
        runs[name] = (start_node(pf, env, tmp_path / f"{name}.log"),
                      start_publisher(env, tmp_path / f"{name}_pub.log", "--duration", "30"))
    try:
        for name, (node, _) in runs.items():
            assert wait_for(lambda: "running" in node.text() or node.p.poll() is not None, 90), node.text()
        time.sleep(2.0)  # inference and commands under way
        for name, sigs in ways.items():
            for sig in sigs:
                runs[name][0].p.send_signal(sig)
                time.sleep(0.05)
        for name, (node, _) in runs.items():
            node.p.wait(30)
            log = node.text()
            assert node.p.returncode == 0, (name, node.p.returncode, log[-2000:])
            assert "Traceback" not in log and "terminate called" not in log and "RCLError" not in log, (name, log)
    finally:
        for node, pub in runs.values():
            node.stop()
            pub.stop()


def test_lifecycle_node_configure_activate_deactivate_cleanup(tmp_path, tiny_bundle):
    from lifecycle_msgs.msg import Transition
    from std_msgs.msg import Float64MultiArray
    domain = domain_id() + 30
    env = ros_env(domain)
    pf = write_params(tmp_path / "lc.yaml", node_params(tiny_bundle))
    col = Collector(domain, Float64MultiArray, "/test/commands")
    node = start_node(pf, env, tmp_path / "lc.log", lifecycle=True)
    pub = start_publisher(env, tmp_path / "pub.log", "--duration", "40")
    try:
        time.sleep(3.0)
        assert col.commands == [] and "bundle" not in node.text()  # unconfigured: nothing loaded
        assert col.transition("policy_node", Transition.TRANSITION_CONFIGURE)
        assert "provider" in node.text()  # configure loaded, verified and warmed up the bundle
        assert "inactive (activate it: ros2 lifecycle set /policy_node activate)" in node.text()
        assert "call ~/start" not in node.text()  # refused while inactive: the hint names the lifecycle
        assert "not started: the node is inactive" in col.call("/policy_node/start")  # the lifecycle decides
        time.sleep(1.5)
        assert col.commands == []  # inactive: no commands
        assert col.transition("policy_node", Transition.TRANSITION_ACTIVATE)
        assert wait_for(lambda: len(col.commands) > 20, 10)
        assert col.transition("policy_node", Transition.TRANSITION_DEACTIVATE)
        time.sleep(0.3)
        n = len(col.commands)
        time.sleep(1.5)
        assert len(col.commands) == n  # deactivated: silent
        assert col.transition("policy_node", Transition.TRANSITION_CLEANUP)
        assert col.transition("policy_node", Transition.TRANSITION_CONFIGURE)  # a second configure works
        assert col.transition("policy_node", Transition.TRANSITION_ACTIVATE)
        assert wait_for(lambda: len(col.commands) > n + 20, 10)
    finally:
        pub.stop()
        rc = node.stop()
        col.close()
    assert rc == 0, node.text()
    assert "Traceback" not in node.text()


def test_lifecycle_autostart_refuses_a_bad_bundle_with_exit_1(tmp_path):
    pf = write_params(tmp_path / "bad.yaml", node_params(tmp_path / "nowhere"))
    node = start_node(pf, ros_env(domain_id() + 31), tmp_path / "bad.log", "--autostart", lifecycle=True)
    node.p.wait(90)
    assert node.stop() == 1
    assert "configure failed" in node.text() and "does not exist" in node.text()
    assert "Traceback" not in node.text()


def test_lifecycle_node_honours_executor_before_configure(monkeypatch):
    """The executor spins an unconfigured lifecycle node: its parameter is read at construction (every other
    attribute exists, None, until configure), and a bad value is refused by name."""
    import rclpy

    from dp_runtime.errors import ConfigError
    from dp_runtime.ros.node import LifecyclePolicyNode
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id() + 32))
    for value, expected in (("multi", "multi"), ("single", "single"), ("fast", None)):
        rclpy.init(args=["--ros-args", "-p", f"executor:={value}"])
        try:
            if expected is None:
                with pytest.raises(ConfigError, match="executor must be one of single, multi, events, got 'fast'"):
                    LifecyclePolicyNode()
                continue
            node = LifecyclePolicyNode()
            assert node.executor_kind == expected
            assert node.runner is None and node.p is None and node.entities == [] and not node.alive
            node.shutdown()  # nothing started: a no-op
            node.destroy_node()
        finally:
            rclpy.try_shutdown()


def test_param_set_applies_live_settings_and_refuses_the_rest_with_a_reason(tmp_path, tiny_bundle):
    """`ros2 param set` (the SetParameters service it calls): on_starvation / limits change from the next tick
    and are logged; control_rate_hz, bundle and a mistyped value are refused with the reason."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from std_msgs.msg import Float64MultiArray
    domain = domain_id() + 33
    env = ros_env(domain)
    pf = write_params(tmp_path / "p.yaml", node_params(tiny_bundle))
    col = Collector(domain, Float64MultiArray, "/test/commands")
    node = start_node(pf, env, tmp_path / "p.log")
    pub = start_publisher(env, tmp_path / "pub.log", "--duration", "40")

    def set_param(name, value):
        kind = {float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
                list: ParameterType.PARAMETER_DOUBLE_ARRAY}[type(value)]
        v = ParameterValue(type=kind)
        if kind == ParameterType.PARAMETER_DOUBLE:
            v.double_value = value
        elif kind == ParameterType.PARAMETER_STRING:
            v.string_value = value
        else:
            v.double_array_value = value
        res = col.request(SetParameters, "/policy_node/set_parameters",
                          SetParameters.Request(parameters=[Parameter(name=name, value=v)]))
        return res.results[0]

    try:
        assert wait_for(lambda: "running" in node.text(), 60), node.text()
        assert wait_for(lambda: len(col.commands) > 5, 20)
        r = set_param("control_rate_hz", 20.0)
        assert not r.successful and "control_rate_hz is read when the node starts: restart the node" in r.reason
        r = set_param("bundle", "/elsewhere")
        assert not r.successful and "read when the node starts" in r.reason
        r = set_param("on_stale", "freeze")
        assert not r.successful and "on_stale must be one of stop, hold_position, got 'freeze'" in r.reason
        assert set_param("on_starvation", "stop").successful
        assert set_param("action_max_delta", [0.001]).successful
        assert wait_for(lambda: "parameters set: action_max_delta=[0.001] (from the next tick)" in node.text(), 5)
        n = len(col.commands)
        assert wait_for(lambda: len(col.commands) > n + 10, 10)
        recent = np.array([list(m.data) for _, m in col.commands[n + 2:n + 10]])
        assert np.all(np.abs(np.diff(recent, axis=0)) <= 0.001 + 1e-9)  # the new limit holds from the next tick
    finally:
        pub.stop()
        assert node.stop() == 0
        col.close()
    assert "Traceback" not in node.text()
