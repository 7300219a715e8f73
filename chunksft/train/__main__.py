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
    from chunksft.checkpoint.manager import CheckpointError
    from chunksft.data import DataError
    from chunksft.train.distributed import setup_distributed

    dist_info = setup_distributed()
    from chunksft.train.loop import NonFiniteLossError, run

    try:
        run(cfg, dist_info)
    except (ConfigError, CheckpointError, DataError, NonFiniteLossError) as exc:
        print(f"error (rank {dist_info.rank}): {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
