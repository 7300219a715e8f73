"""`python -m chunksft.data.bundled [--out DIR] [--force]`: build the bundled data and tokenizer."""
import argparse
import time

from chunksft.data.bundled import build, bundled_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help=f"output directory (default {bundled_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete build exists")
    args = parser.parse_args()
    start = time.perf_counter()
    out = build(args.out, force=args.force)
    print(f"bundled data and tokenizer ready in {out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
