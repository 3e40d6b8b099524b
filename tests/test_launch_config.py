"""The launch file and configs, checked without the launch packages (no PyPI wheels exist for them)."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from dp_runtime.ros.params import PARAMETERS, NodeParams, flatten_params

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "policy.launch.py"
OBS_FIELDS = {"topic", "type", "qos", "field", "joint_names"}
NODE_PARAMS = set(PARAMETERS) | {"use_sim_time"}


def console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'f?"([\w-]+) = \{PACKAGE\}\.([\w.:]+)"', text))


class _Stub:
    """Stands in for every launch / launch_ros class: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Stub):
    def perform(self, context):
        return context[self.args[0]]


class _ParameterValue(_Stub):
    """launch_ros.ParameterValue's own rule (launch.utilities.type_utils.normalize_typed_substitution): a plain
    scalar must already be an instance of value_type; only a substitution is typed later, when performed."""

    def __init__(self, value, *, value_type=None):
        if isinstance(value, (str, int, float, bool)) and value_type is not None:
            ok = isinstance(value, value_type) and not (value_type is int and isinstance(value, bool))
            if value_type is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise TypeError(f"value='{value}' is not an instance of {value_type}")
        super().__init__(value, value_type=value_type)


def stub_launch_modules(monkeypatch) -> None:
    """Fake launch and launch_ros (no PyPI wheels exist) with the names the launch file imports."""
    import sys
    import types
    names = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "EmitEvent", "OpaqueFunction", "RegisterEventHandler"],
        "launch.event_handlers": ["OnProcessExit", "OnProcessIO"], "launch.events": ["Shutdown"],
        "launch.substitutions": ["PathJoinSubstitution"], "launch_ros.actions": ["Node"],
        "launch_ros.substitutions": ["FindPackageShare"], "launch_ros": [],
        "launch_ros.parameter_descriptions": [],
    }
    for mod, classes in names.items():
        m = types.ModuleType(mod)
        for c in classes:
            setattr(m, c, type(c, (_Stub,), {}))
        monkeypatch.setitem(sys.modules, mod, m)
    sys.modules["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    sys.modules["launch_ros.parameter_descriptions"].ParameterValue = _ParameterValue


def launch_with(monkeypatch, **given):
    """Run the launch file's node function as `ros2 launch ... name:=value` would; returns (node, handler)."""
    import runpy
    stub_launch_modules(monkeypatch)
    module = runpy.run_path(str(LAUNCH))
    ld = module["generate_launch_description"]()
    entities = ld.args[0]
    declared = {e.args[0]: e.kwargs.get("default_value") for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    context = {name: ("" if name == "config" else default) for name, default in declared.items()}
    context["config"] = str(ROOT / "config" / "policy.yaml")
    context.update(given)
    opaque = next(e for e in entities if type(e).__name__ == "OpaqueFunction")
    node, output, exit_handler = opaque.kwargs["function"](context)
    return module, declared, node, exit_handler


def test_launch_file_compiles_and_names_the_installed_executables(monkeypatch):
    compile(LAUNCH.read_text(), str(LAUNCH), "exec")
    scripts = console_scripts()
    _, _, node, _ = launch_with(monkeypatch)
    assert node.kwargs["package"] == "dp_runtime" and scripts[node.kwargs["executable"]] == "ros.node:main"
    _, _, lc, _ = launch_with(monkeypatch, lifecycle="true")
    assert scripts[lc.kwargs["executable"]] == "ros.node:lifecycle_main"
    assert lc.kwargs["arguments"] == ["--autostart", "--exit-with-parent"]
    _, _, manual, _ = launch_with(monkeypatch, lifecycle="true", lifecycle_autostart="false")
    assert manual.kwargs["arguments"] == ["--exit-with-parent"]
    node_src = (ROOT / "dp_runtime" / "ros" / "node.py").read_text()
    assert f'super().__init__("{node.kwargs["name"]}")' in node_src


def test_the_config_file_is_the_source_of_truth_unless_an_argument_is_given(monkeypatch):
    _, declared, node, _ = launch_with(monkeypatch)
    assert {"bundle", "config", "backend", "precision", "server_url", "use_sim_time", "lifecycle",
            "lifecycle_autostart"} == set(declared)
    assert node.kwargs["parameters"] == [str(ROOT / "config" / "policy.yaml")]  # nothing given: no override
    _, _, node, _ = launch_with(monkeypatch, bundle="1.5", backend="1", precision="int8", use_sim_time="true")
    overrides = node.kwargs["parameters"][1]
    assert set(overrides) <= NODE_PARAMS
    # launch_ros types a substitution when the node starts: "1.5" as str stays text, "true" as bool is a bool.
    # A performed string with value_type=bool is what real launch_ros refuses (the stub applies its rule).
    (bundle,), kind = overrides["bundle"].args, overrides["bundle"].kwargs["value_type"]
    assert isinstance(bundle, _LaunchConfiguration) and bundle.perform({"bundle": "1.5"}) == "1.5" and kind is str
    assert overrides["backend"].kwargs["value_type"] is str and overrides["use_sim_time"].kwargs["value_type"] is bool
    assert overrides["precision"].args[0].args == ("precision",)
    for spelling in ("true", "false", "True", "1"):
        _, _, node, _ = launch_with(monkeypatch, use_sim_time=spelling)
        assert isinstance(node.kwargs["parameters"][1]["use_sim_time"].args[0], _LaunchConfiguration)


def test_launch_stub_refuses_what_real_launch_ros_refuses():
    with pytest.raises(TypeError, match="value='false' is not an instance of <class 'bool'>"):
        _ParameterValue("false", value_type=bool)
    _ParameterValue(_LaunchConfiguration("use_sim_time"), value_type=bool)


def test_boolean_launch_arguments_take_ros_spellings_and_refuse_others(monkeypatch):
    for spelling in ("yes", "1", "on", "True"):
        _, _, node, _ = launch_with(monkeypatch, lifecycle=spelling)
        assert node.kwargs["executable"] == "policy_lifecycle_node", spelling
    _, _, node, _ = launch_with(monkeypatch, lifecycle="0")
    assert node.kwargs["executable"] == "policy_node"
    with pytest.raises(RuntimeError, match="lifecycle:=maybe: expected true or false"):
        launch_with(monkeypatch, lifecycle="maybe")


def test_show_args_describes_the_config_default_in_words(monkeypatch):
    _, declared, _, _ = launch_with(monkeypatch)
    assert declared["config"] == ""  # resolved to the package's config/policy.yaml when the launch runs


def test_a_missing_config_file_ends_the_launch(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="config:=.*nowhere.yaml: no such file"):
        launch_with(monkeypatch, config=str(tmp_path / "nowhere.yaml"))


def test_the_nodes_exit_ends_the_launch_and_an_error_exit_fails_it(monkeypatch):
    module, _, node, handler = launch_with(monkeypatch)
    on_exit = handler.args[0]
    assert on_exit.kwargs["target_action"] is node
    exited = on_exit.kwargs["on_exit"]
    with pytest.raises(RuntimeError, match="policy_node exited with status 1$"):  # ros2 launch then exits 1
        exited(type("Event", (), {"returncode": 1})(), None)
    reason = exited.__self__
    reason.on_output(type("IO", (), {"text": b"[FATAL] [1.2] [policy_node]: refusing to start: BundleError: no x\n"})())
    with pytest.raises(RuntimeError, match="status 1: refusing to start: BundleError: no x$"):
        exited(type("Event", (), {"returncode": 1})(), None)
    (emit,) = exited(type("Event", (), {"returncode": 0})(), None)
    assert type(emit.kwargs["event"]).__name__ == "Shutdown"


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
    for f in (f for f in fields(NodeParams) if f.name in PARAMETERS):
        if isinstance(getattr(defaults, f.name), list):
            assert f"# {f.name}:" in text, f"list parameter {f.name} is not documented"
        else:
            assert params[f.name] == getattr(defaults, f.name), f.name


def test_generated_parameter_docs_match_the_declarations():
    """README's table and config/policy.yaml are produced from NodeParams: editing either by hand, or adding a
    parameter without regenerating them, fails here (python -m dp_runtime.ros.params --write)."""
    from dp_runtime.ros.params import PARAMETERS, documented_files
    for path, text in documented_files(ROOT).items():
        assert path.read_text() == text, f"{path.name} drifted from NodeParams"
    doc = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())["policy_node"]["ros__parameters"]
    listed = set(doc) | set(re.findall(r"# (\w+): \[\.\.\.\]", (ROOT / "config" / "policy.yaml").read_text()))
    assert listed == set(PARAMETERS)


def test_launch_argument_descriptions_come_from_the_parameters(monkeypatch):
    import runpy
    from dp_runtime.ros.params import PARAMETERS
    stub_launch_modules(monkeypatch)
    entities = runpy.run_path(str(LAUNCH))["generate_launch_description"]().args[0]
    described = {e.args[0]: e.kwargs["description"] for e in entities
                 if type(e).__name__ == "DeclareLaunchArgument" and e.args[0] in ("bundle", "backend", "precision",
                                                                                  "server_url")}
    for name, text in described.items():  # the launch file stays free of dp_runtime imports: checked here
        rule = PARAMETERS[name][0]
        assert text == f"{rule.doc}{f' ({rule.describe()})' if rule.describe() else ''}; default: the config's", name
    assert len(described) == 4
