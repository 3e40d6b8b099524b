"""``python -m dp_runtime.cli_entry dp-export ...``: run any console script without installing it."""
import sys

from . import cli

COMMANDS = {"dp-export": cli.export_main, "dp-inspect": cli.inspect_main, "dp-train": cli.train_main,
            "dp-replay": cli.replay_main, "dp-dataset": cli.dataset_main, "dp-demo": cli.demo_main,
            "dp-bench": cli.bench_main}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
