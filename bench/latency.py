"""Per-chunk latency on the DP-CNN reference size (eager vs bundle backends): ``dp-bench``, with results here.

    python bench/latency.py [--repeats 10] [--device cpu|cuda] [--out bench/results/latency_cpu.json]
"""
from pathlib import Path

from dp_runtime.latency_bench import main

if __name__ == "__main__":
    main(results_dir=Path(__file__).parent / "results")
