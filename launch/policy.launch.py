"""ros2 launch dp_runtime policy.launch.py [bundle:=DIR] [config:=FILE] [backend:=...] [precision:=...]
                                          [server_url:=URL] [use_sim_time:=...] [lifecycle:=false]
                                          [lifecycle_autostart:=true]

One node. The config file is the source of truth; a launch argument overrides it only when given,
typed as the parameter is (bundle:=1.5 stays the text "1.5"; use_sim_time takes ROS's boolean
spellings). A missing config file, or the node exiting with an error, ends the launch with a non-zero
status and a last line naming the node's exit code and reason. lifecycle:=true starts the managed node;
lifecycle_autostart:=true drives it through configure and activate itself. The node exits by itself
when this launch process disappears (SIGTERM to `ros2 launch` alone, SIGKILL).
"""
import os

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# launch argument -> type of the node parameter it overrides (only when given)
OVERRIDES = {"bundle": str, "backend": str, "precision": str, "server_url": str, "use_sim_time": bool}


DEFAULT_CONFIG = ("dp_runtime", "config", "policy.yaml")  # in the package's share directory


def flag(name: str, context) -> bool:
    """A boolean launch argument, spelled as ROS spells booleans (YAML's true/false/yes/no/on/off, 1/0)."""
    text = LaunchConfiguration(name).perform(context).strip()
    value = {"1": True, "0": False}.get(text, yaml.safe_load(text) if text else None)
    if not isinstance(value, bool):
        raise RuntimeError(f"{name}:={text}: expected true or false (or yes/no, on/off, 1/0)")
    return value


class ExitReason:
    """The node's last FATAL line (its refusal), kept from its output for the launch's last line."""

    def __init__(self):
        self.line = ""

    def on_output(self, event):
        for line in event.text.decode(errors="replace").splitlines():
            if "FATAL" in line:
                self.line = line.split("]: ", 1)[-1].strip()

    def on_exit(self, event, context):
        """The node's exit ends the launch; an error exit makes `ros2 launch` itself exit non-zero (launch
        turns only an exception into a non-zero status, and prints its text as the last line)."""
        if event.returncode != 0:
            why = f": {self.line}" if self.line else ""
            raise RuntimeError(f"policy_node exited with status {event.returncode}{why}")
        return [EmitEvent(event=Shutdown(reason="policy_node exited"))]


def launch_node(context):
    config = LaunchConfiguration("config").perform(context)
    if not config:
        config = PathJoinSubstitution([FindPackageShare(DEFAULT_CONFIG[0]), *DEFAULT_CONFIG[1:]]).perform(context)
    if not os.path.isfile(config):
        raise RuntimeError(f"config:={config}: no such file (expected a ROS 2 parameter YAML)")
    # Typed by launch_ros when the node starts (a performed string with value_type=bool is refused by it).
    overrides = {name: ParameterValue(LaunchConfiguration(name), value_type=kind) for name, kind in OVERRIDES.items()
                 if LaunchConfiguration(name).perform(context)}
    lifecycle, autostart = flag("lifecycle", context), flag("lifecycle_autostart", context)
    node = Node(
        package="dp_runtime",
        executable="policy_lifecycle_node" if lifecycle else "policy_node",
        name="policy_node",
        output="screen",
        arguments=(["--autostart"] if lifecycle and autostart else []) + ["--exit-with-parent"],
        parameters=[config] + ([overrides] if overrides else []),
    )
    reason = ExitReason()
    return [node, RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=reason.on_output,
                                                   on_stderr=reason.on_output)),
            RegisterEventHandler(OnProcessExit(target_action=node, on_exit=reason.on_exit))]


def generate_launch_description():
    return LaunchDescription([
        # Descriptions: the node parameters' own (dp_runtime/ros/params.py); a test checks they match.
        DeclareLaunchArgument("bundle", default_value="",
                              description="exported bundle directory (dp-export -o ...); default: the config's"),
        DeclareLaunchArgument("config", default_value="",
                              description="node parameters (ROS 2 parameter YAML); default: the package's "
                                          "config/policy.yaml"),
        DeclareLaunchArgument("backend", default_value="",
                              description="graph format to run: auto (the compiled programs where a compile for "
                                          "this machine is cached and they measure faster here than onnxruntime, "
                                          "else the first the bundle has: onnxruntime, then torchscript; logged with "
                                          "the reason), or remote (a dp-serve host at server_url runs the bundle) "
                                          "(one of auto, onnxruntime, torchscript, aoti, remote); "
                                          "default: the config's"),
        DeclareLaunchArgument("precision", default_value="",
                              description="bundle variant; auto = the fastest within its recorded error bound with "
                                          "native kernels on the device (dp-inspect lists them) (one of auto, fp32, "
                                          "int8, fp16, bf16, tf32); default: the config's"),
        DeclareLaunchArgument("server_url", default_value="",
                              description="backend remote: dp-serve's address, http(s)://HOST:PORT; default: the "
                                          "config's"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="follow /clock: true or false (default: the config's)"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="start the managed (lifecycle) node: true or false"),
        DeclareLaunchArgument("lifecycle_autostart", default_value="true",
                              description="lifecycle node: configure and activate without a manager: true or false"),
        OpaqueFunction(function=launch_node),
    ])
