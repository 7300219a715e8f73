"""python -m chunksft.train --config configs/train/<name>.yaml [--key value ...]

Runs unchanged under the deepspeed launcher, torchrun and plain python (one process).
"""
from __future__ import annotations

import sys

from chunksft.train.config import ConfigError, help_text, load_config
from chunksft.train.preflight import preflight


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    try:
        cfg = load_config(argv)
        preflight(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Imported after the config parsed: deepspeed / transformers take seconds to import.
    from chunksft.checkpoint.tags import CheckpointError
    from chunksft.data import DataError
    from chunksft.train.distributed import setup_distributed, shutdown_distributed

    dist_info = setup_distributed()
    from chunksft.train.loop import NonFiniteLossError, run
    from chunksft.train.stopping import TrainingStopped

    try:
        run(cfg, dist_info)
    except (ConfigError, CheckpointError, DataError, NonFiniteLossError) as exc:
        print(f"error (rank {dist_info.rank}): {exc}", file=sys.stderr, flush=True)
        return 2
    except TrainingStopped as exc:  # every rank saved the same step; one line is enough
        if dist_info.is_main:
            print(str(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the graceful-stop handlers were installed, or a second Ctrl-C
        print("interrupted (Ctrl-C): stopped at once without saving; complete checkpoints are intact",
              file=sys.stderr, flush=True)
        sys.exit(130)
