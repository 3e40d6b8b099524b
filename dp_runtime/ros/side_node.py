"""An rclpy node in its own context, spun on a background thread.

For tools that watch or drive a ROS graph from outside it (realtime replay,
the demo's watcher, the tests' collector) without touching the default context.
"""
from __future__ import annotations

import threading


class SideNode:
    def __init__(self, name: str, domain_id: int | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)  # None: ROS_DOMAIN_ID from the environment
        self.node = rclpy.create_node(name, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self.context.ok():
            self._executor.spin_once(timeout_sec=0.02)

    def close(self) -> None:
        self._running = False
        self._thread.join(2)
        self._executor.shutdown()
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)
