"""dp-serve as a child process: started, waited for until it answers, stopped with SIGINT.

What dp-demo --remote, bench/serve.py and the tests use to run a real server on this machine.
"""
from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..errors import ServerError
from ..wire import ROUTE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, bundles: list[str | Path], log: Path, port: int | None = None, args: tuple[str, ...] = (),
                 tls_context: ssl.SSLContext | None = None):
        """``args``: more dp-serve options; ``tls_context``: how to reach it over https (client side)."""
        self.port = port or free_port()
        self.scheme = "https" if "--tls-cert" in args else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.log = Path(log)
        self.tls_context = tls_context
        self.cmd = [sys.executable, "-m", "dp_runtime.serve.cli", *map(str, bundles), "--port", str(self.port), *args]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> "ServerProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"dp-serve exited with code {self.proc.returncode}: {self.tail()}")
            try:
                self.health(timeout=2.0)
                return self
            except (OSError, ValueError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"dp-serve did not answer at {self.url} within {timeout:.0f} s: {self.tail()}")

    def health(self, timeout: float = 5.0) -> dict:
        with urllib.request.urlopen(f"{self.url}{ROUTE}/health", timeout=timeout, context=self.tls_context) as r:
            return json.loads(r.read())

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGINT (Serve and Ray shut down cleanly), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
