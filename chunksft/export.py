"""`python -m chunksft.export --checkpoint DIR [--tag TAG] --output HF_DIR`: the command-line entry.

The export itself (consolidation, model card, `load_export`) lives with the checkpoints it reads:
`chunksft.checkpoint.export`.
"""
import sys

from chunksft.checkpoint.export import main

if __name__ == "__main__":
    sys.exit(main())
