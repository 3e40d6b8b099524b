"""``python -m dp_runtime.ros.lifecycle_node [--autostart] --ros-args ...``: the managed policy node."""
import sys

from .node import lifecycle_main

if __name__ == "__main__":
    sys.exit(lifecycle_main())
