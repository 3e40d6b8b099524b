"""open_runtime: parameters -> verified engine + runner + topics, the same for the node and replay.

No rclpy here: the node passes a getter over its declared parameters, replay one
over its parameter file, so both build exactly the same control loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..control import IMMEDIATE, Delivery, PolicyRunner
from ..engine import PolicyEngine, load_bundle
from ..engine.backends import BackendOptions
from ..engine.remote import ClientTls, RemoteEngine
from ..errors import ConfigError
from ..layout import slices
from .commands import CommandContext, CommandInterface, CommandOutput, command_interface, command_outputs
from .params import NodeParams, ObsTopic, resolve_obs_topics


@dataclass
class Runtime:
    params: NodeParams
    engine: PolicyEngine
    runner: PolicyRunner
    topics: list[ObsTopic]
    interface: CommandInterface
    outputs: list[CommandOutput] = field(default_factory=list)  # command_outputs: slices beside the command

    @property
    def action_names(self) -> list[str]:
        return self.runner.action_names

    @property
    def dt(self) -> float:
        return self.runner.dt

    def command_context(self, stamp: float, previous=None) -> CommandContext:
        return CommandContext(self.action_names, stamp, self.dt, previous, self.engine.spec.action.segments,
                              self.params.command_frame_id, self.runner.command_reference)


def open_engine(p: NodeParams) -> PolicyEngine | RemoteEngine:
    if p.backend == "remote":
        tls = ClientTls(p.server_tls_ca, p.server_tls_cert, p.server_tls_key)
        return RemoteEngine(p.bundle, p.server_url, p.server_timeout, tls)  # refuses TLS files with an http URL
    options = BackendOptions(threads=p.threads or None, cuda_graphs=p.cuda_graphs,
                             compile_cache=Path(p.compile_cache).expanduser() if p.compile_cache else None)
    return load_bundle(p.bundle, backend=p.backend, device=p.device, num_inference_steps=p.num_inference_steps or None,
                       precision=p.precision, max_action_error=p.max_action_error or None,
                       need_inpaint=p.transition is not None and p.transition.inpaints, options=options)


def open_runtime(p: NodeParams, get: Callable[[str, Any], Any], engine: PolicyEngine | None = None,
                 warn: Callable[[str, str], None] | None = None, info: Callable[[str], None] | None = None,
                 keep_observations: bool = False, delivery: Delivery = IMMEDIATE, keep_chunks: int | None = 100,
                 robot_description: Callable[[str], str] | None = None, **runner_overrides: Any) -> Runtime:
    """Build the control loop; ``get(name, default)`` reads per-observation ``obs.<key>.*`` parameters.

    ``delivery``, ``keep_chunks``: replay's simulated clock and full chunk record (PolicyRunner's);
    ``robot_description(topic)``: the URDF latched on a topic (the node's; replay reads URDF files only)."""
    engine = engine or open_engine(p)
    topics = resolve_obs_topics(get, engine.spec.observations, robot_description)
    runner = PolicyRunner(engine, p.runner_config(**runner_overrides), p.limits(engine.spec.action),
                          keep_observations=keep_observations, warn=warn, info=info, delivery=delivery,
                          keep_chunks=keep_chunks)
    interface = command_interface(p.command_interface)
    segments = engine.spec.action.segments
    outputs = command_outputs(p.command_outputs, segments, runner.action_names)
    if outputs and interface.per_chunk:
        raise ConfigError(f"command_outputs are published per tick; command_interface {interface.name} publishes "
                          "one trajectory per chunk (use a per-tick interface with them)")
    interface.check(segments, measures_pose=runner.ee is not None)
    if interface.pose:
        if p.on_stale == "hold_position":
            raise ConfigError(f"on_stale hold_position holds the measured joints; with command_interface "
                              f"{interface.name} use on_stale: stop")
        published = {i for o in outputs for i in o.columns}
        left = [s.describe() for s, sl in slices(segments)
                if s.kind not in ("position", "rotation") and not set(range(sl.start, sl.stop)) <= published]
        if left:
            (info or print)(f"command_interface {interface.name} publishes the pose; not published: "
                            f"{', '.join(left)}")
    return Runtime(p, engine, runner, topics, interface, outputs)
