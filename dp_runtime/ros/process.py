"""Stopping ROS processes cleanly."""
from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGINT first, SIGTERM if it hangs, never SIGKILL first: Fast DDS leaves its shared-memory
    files behind after SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(5)
    return proc.returncode
