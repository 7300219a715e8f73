"""World-size change: DeepSpeed's universal checkpoint conversion behind our CLI.

    python -m chunksft.checkpoint.universal --checkpoint RUN_DIR|TAG_DIR [--tag global_stepN]

writes ``checkpoints/<tag>_universal/`` (plus its COMPLETE marker) next to the native tag. A run on
another number of ranks then resumes from it with ``--resume auto`` (or the tag's path): the
resume logic picks the universal form whenever the world size differs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from types import SimpleNamespace

from chunksft.checkpoint.tags import (CHECKPOINTS, UNIVERSAL_SUFFIX, CheckpointError, newest_complete, passed_over,
                                      read_marker, validate_tag, write_marker)


def convert_to_universal(tag_dir: str) -> str:
    """Convert one complete native tag directory; returns the universal directory.

    Idempotent: an existing complete conversion is reused. Runs in this process (one worker), so
    it is safe to call from rank 0 of a job.
    """
    from deepspeed.checkpoint import ds_to_universal

    tag_dir = os.path.abspath(tag_dir.rstrip("/"))
    problem = validate_tag(tag_dir)
    if problem is not None:
        raise CheckpointError(f"cannot convert: {problem}")
    out = tag_dir + UNIVERSAL_SUFFIX
    if validate_tag(out) is None:
        return out
    shutil.rmtree(out, ignore_errors=True)
    args = SimpleNamespace(input_folder=tag_dir, output_folder=out, num_extract_workers=1, num_merge_workers=1,
                           keep_temp_folder=False, strict=True, inject_missing_state=False)
    ds_to_universal.main(args)
    write_marker(out, {**read_marker(tag_dir), "universal": True})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chunksft.checkpoint.universal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="a run's output_dir (newest complete tag) or one checkpoints/global_step<N> folder")
    parser.add_argument("--tag", default=None, help="tag under the run's checkpoints/ (default: newest complete)")
    args = parser.parse_args(argv)
    try:
        if args.tag is not None:
            tag_dir = os.path.join(args.checkpoint, CHECKPOINTS, args.tag)
        else:
            found = newest_complete(args.checkpoint, args.checkpoint)
            if found is None:
                raise CheckpointError(f"{args.checkpoint}: no checkpoint to convert")
            for line in passed_over(found.skipped, found.tag, "converting"):
                print(line, file=sys.stderr)
            tag_dir = os.path.join(found.root, found.tag)
        out = convert_to_universal(tag_dir)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"universal checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
