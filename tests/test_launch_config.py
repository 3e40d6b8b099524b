"""The launch file and configs, checked without the launch packages (no PyPI wheels exist for them)."""
from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from dp_runtime.ros.params import NodeParams, flatten_params

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "policy.launch.py"
OBS_FIELDS = {"topic", "type", "qos", "field", "joint_names"}
NODE_PARAMS = {f.name for f in fields(NodeParams)} | {"use_sim_time"}


def console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'f?"([\w-]+) = \{PACKAGE\}\.([\w.:]+)"', text))


def launch_node_call() -> ast.Call:
    tree = ast.parse(LAUNCH.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    assert len(calls) == 1
    return calls[0]


def kw(call: ast.Call, name: str):
    return next(k.value for k in call.keywords if k.arg == name)


def test_launch_file_compiles_and_names_the_installed_executable():
    compile(LAUNCH.read_text(), str(LAUNCH), "exec")
    node = launch_node_call()
    assert ast.literal_eval(kw(node, "package")) == "dp_runtime"
    exe = ast.literal_eval(kw(node, "executable"))
    assert console_scripts()[exe] == "ros.node:main"
    node_src = (ROOT / "dp_runtime" / "ros" / "node.py").read_text()
    assert f'super().__init__("{ast.literal_eval(kw(node, "name"))}")' in node_src


def test_launch_arguments_are_declared_and_passed_to_existing_parameters():
    tree = ast.parse(LAUNCH.read_text())
    declared = {ast.literal_eval(n.args[0]) for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    used = {ast.literal_eval(n.args[0]) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "LaunchConfiguration"}
    assert declared == used == {"bundle", "config", "backend", "use_sim_time"}
    params = kw(launch_node_call(), "parameters")
    overrides = next(e for e in params.elts if isinstance(e, ast.Dict))
    keys = {ast.literal_eval(k) for k in overrides.keys}
    assert keys <= NODE_PARAMS, keys - NODE_PARAMS


@pytest.mark.parametrize("name", ["policy.yaml", "ros2_control_arm.yaml"])
def test_config_keys_exist_on_the_node(name):
    params = flatten_params(yaml.safe_load((ROOT / "config" / name).read_text())["policy_node"]["ros__parameters"])
    for key in params:
        if key.startswith("obs."):
            assert key.count(".") == 2 and key.rsplit(".", 1)[1] in OBS_FIELDS, key
        else:
            assert key in NODE_PARAMS, f"{name}: unknown parameter {key}"
    assert all(v != [] for v in params.values()), "ROS 2 cannot type an empty list"


def test_default_config_documents_the_dataclass_defaults():
    text = (ROOT / "config" / "policy.yaml").read_text()
    params = yaml.safe_load(text)["policy_node"]["ros__parameters"]
    defaults = NodeParams()
    for f in fields(NodeParams):
        if isinstance(getattr(defaults, f.name), list):
            assert f"# {f.name}:" in text, f"list parameter {f.name} is not documented"
        else:
            assert params[f.name] == getattr(defaults, f.name), f.name
