from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dp_runtime"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # ROS 2 packages (rclpy, messages) come from the ROS install or the PyPI
    # wheels in requirements.txt; torch is pinned by the install path, not here.
    install_requires=[
        "setuptools", "numpy", "torch>=2.1", "diffusers>=0.30", "safetensors>=0.4", "onnx>=1.16", "onnx-ir>=0.1",
        "rosbags>=0.10", "mcap>=1.1", "pyyaml", "matplotlib", "tqdm", "pillow", "kinpy>=0.6",
    ],
    zip_safe=True,
    maintainer="dp_runtime developers",
    maintainer_email="dp-runtime@example.com",
    description="ROS 2 deployment runtime for Diffusion Policy: export, node, replay.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            f"dp-export = {PACKAGE}.cli:export_main",
            f"dp-inspect = {PACKAGE}.cli:inspect_main",
            f"dp-replay = {PACKAGE}.cli:replay_main",
            f"dp-train = {PACKAGE}.cli:train_main",
            f"dp-bench = {PACKAGE}.cli:bench_main",
            f"dp-dataset = {PACKAGE}.cli:dataset_main",
            f"dp-demo = {PACKAGE}.cli:demo_main",
            f"dp-sim = {PACKAGE}.sim.node:main",
            f"dp-serve = {PACKAGE}.serve.cli:main",
            f"policy_node = {PACKAGE}.ros.node:main",
            f"policy_lifecycle_node = {PACKAGE}.ros.node:lifecycle_main",
        ],
    },
)
