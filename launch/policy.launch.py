"""ros2 launch dp_runtime policy.launch.py bundle:=/path/to/bundle [config:=...] [backend:=auto] [use_sim_time:=false]

Deliberately trivial (no launch wheels exist on PyPI to test it with): one node,
the YAML config first, then the launch arguments on top of it.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bundle", description="exported bundle directory (dp-export output)"),
        DeclareLaunchArgument(
            "config", default_value=PathJoinSubstitution([FindPackageShare("dp_runtime"), "config", "policy.yaml"]),
            description="node parameters (ROS 2 parameter YAML)"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto | onnxruntime | torchscript"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        Node(
            package="dp_runtime",
            executable="policy_node",
            name="policy_node",
            output="screen",
            parameters=[
                LaunchConfiguration("config"),
                {
                    "bundle": LaunchConfiguration("bundle"),
                    "backend": LaunchConfiguration("backend"),
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                },
            ],
        ),
    ])
