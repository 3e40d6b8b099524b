"""ros2 launch dp_runtime policy.launch.py [bundle:=DIR] [config:=FILE] [backend:=...] [precision:=...]
                                          [use_sim_time:=...] [lifecycle:=false] [lifecycle_autostart:=true]

One node. The config file is the source of truth; a launch argument overrides it only when given,
always as a string (bundle:=1.5 stays the text "1.5"). A missing config file, or the node exiting
with an error, ends the launch with a non-zero status. lifecycle:=true starts the managed node;
lifecycle_autostart:=true drives it through configure and activate itself.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# launch argument -> type of the node parameter it overrides (only when given)
OVERRIDES = {"bundle": str, "backend": str, "precision": str, "use_sim_time": bool}


def node_exited(event, context):
    """The node's exit ends the launch; an error exit makes `ros2 launch` itself exit non-zero."""
    if event.returncode != 0:
        raise RuntimeError(f"policy_node exited with status {event.returncode}")
    return [EmitEvent(event=Shutdown(reason="policy_node exited"))]


def launch_node(context):
    config = LaunchConfiguration("config").perform(context)
    if config and not os.path.isfile(config):
        raise RuntimeError(f"config:={config}: no such file (expected a ROS 2 parameter YAML)")
    given = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    overrides = {name: ParameterValue(value, value_type=OVERRIDES[name]) for name, value in given.items() if value}
    lifecycle = LaunchConfiguration("lifecycle").perform(context).lower() == "true"
    autostart = LaunchConfiguration("lifecycle_autostart").perform(context).lower() == "true"
    node = Node(
        package="dp_runtime",
        executable="policy_lifecycle_node" if lifecycle else "policy_node",
        name="policy_node",
        output="screen",
        arguments=["--autostart"] if lifecycle and autostart else [],
        parameters=[p for p in (config, overrides) if p],
    )
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=node_exited))]


def generate_launch_description():
    return LaunchDescription([
        # Descriptions: the node parameters' own (dp_runtime/ros/params.py); a test checks they match.
        DeclareLaunchArgument("bundle", default_value="",
                              description="exported bundle directory (dp-export -o ...); default: the config's"),
        DeclareLaunchArgument(
            "config", default_value=PathJoinSubstitution([FindPackageShare("dp_runtime"), "config", "policy.yaml"]),
            description="node parameters (ROS 2 parameter YAML)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="graph format to run: auto (the first the bundle has: onnxruntime, then "
                                          "torchscript) (one of auto, onnxruntime, torchscript); "
                                          "default: the config's"),
        DeclareLaunchArgument("precision", default_value="",
                              description="bundle variant; auto = the fastest within its recorded error bound with "
                                          "native kernels on the device (dp-inspect lists them) (one of auto, fp32, "
                                          "int8, fp16, bf16); default: the config's"),
        DeclareLaunchArgument("use_sim_time", default_value="", description="follow /clock (default: the config's)"),
        DeclareLaunchArgument("lifecycle", default_value="false", description="start the managed (lifecycle) node"),
        DeclareLaunchArgument("lifecycle_autostart", default_value="true",
                              description="lifecycle node: configure and activate without a manager"),
        OpaqueFunction(function=launch_node),
    ])
