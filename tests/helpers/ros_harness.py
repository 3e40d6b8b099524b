"""Run the policy node and the sensor publisher as real processes on a private ROS domain."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dp_runtime.ros.process import stop_process
from dp_runtime.ros.side_node import SideNode

HELPERS = Path(__file__).parent


def domain_id() -> int:
    """A ROS_DOMAIN_ID per test run so parallel runs never cross-talk (Fast DDS allows 0..232)."""
    return 100 + os.getpid() % 100


def ros_env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env["PYTHONUNBUFFERED"] = "1"
    # helper scripts run as files import their siblings as helpers.*
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS.parent), env.get("PYTHONPATH")]))
    return env


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump({"policy_node": {"ros__parameters": params}}))
    return path


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.fh = open(log, "w")
        self.p = subprocess.Popen(args, env=env, stdout=self.fh, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 10) -> int:
        rc = stop_process(self.p, timeout)
        self.fh.close()
        return rc

    def text(self) -> str:
        if not self.fh.closed:
            self.fh.flush()
        return self.log.read_text()


def start_node(params_file: Path, env: dict[str, str], log: Path, *extra: str, lifecycle: bool = False) -> Proc:
    """The node as `ros2 run` starts it; ``extra``: more --ros-args (``-p name:=value``)."""
    module = "dp_runtime.ros.lifecycle_node" if lifecycle else "dp_runtime.ros.node"
    args = [sys.executable, "-m", module]
    if lifecycle and "--autostart" in extra:
        args.append("--autostart")
        extra = tuple(e for e in extra if e != "--autostart")
    return Proc([*args, "--ros-args", "--params-file", str(params_file), *extra], env, log)


def start_publisher(env: dict[str, str], log: Path, *args: str) -> Proc:
    return Proc([sys.executable, str(HELPERS / "sensor_publisher.py"), *args], env, log)


def wait_for(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return False


class Collector(SideNode):
    """In-test subscriber (its own rclpy context) recording commands and diagnostics with arrival times."""

    def __init__(self, domain: int, command_type, command_topic: str):
        from diagnostic_msgs.msg import DiagnosticArray
        super().__init__("test_collector", domain)
        self.commands: list[tuple[float, object]] = []
        self.diagnostics: list[tuple[float, object]] = []
        self.node.create_subscription(command_type, command_topic,
                                      lambda m: self.commands.append((time.time(), m)), 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                      lambda m: self.diagnostics.append((time.time(), m)), 50)

    def call(self, service: str, timeout: float = 5.0) -> str:
        from std_srvs.srv import Trigger
        return self.request(Trigger, service, Trigger.Request(), timeout).message

    def request(self, srv_type, service: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, service)
        assert client.wait_for_service(timeout), f"service {service} not available"
        future = client.call_async(request)
        end = time.time() + timeout
        while not future.done() and time.time() < end:
            time.sleep(0.02)
        return future.result()

    def transition(self, node: str, transition_id: int) -> bool:
        """A lifecycle transition through the node's ~/change_state service, as `ros2 lifecycle set` does."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        return self.request(ChangeState, f"/{node}/change_state",
                            ChangeState.Request(transition=Transition(id=transition_id))).success

    def last_diag(self) -> dict:
        if not self.diagnostics:
            return {}
        st = self.diagnostics[-1][1].status[0]
        return {"level": int.from_bytes(st.level, "little") if isinstance(st.level, bytes) else int(st.level),
                "message": st.message, **{kv.key: kv.value for kv in st.values}}
