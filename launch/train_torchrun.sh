#!/usr/bin/env bash
# Launch one chunksft run with torchrun (same environment variables as launch/train.sh):
#   launch/train_torchrun.sh [CONFIG] [--key value ...]     CONFIG defaults to configs/train/tiny.yaml
# Multi-node: run once per node with NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT set alike.
set -euo pipefail
source "$(dirname "$0")/caller_paths.sh"   # before the cd: paths relative to the caller
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    export DS_ACCELERATOR=cpu
    DEFAULT_NPROC=2
else
    DEFAULT_NPROC=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$DEFAULT_NPROC}
CONFIG=$PWD/configs/train/tiny.yaml
if [[ $# -gt 0 && "$1" != --* ]]; then CONFIG=$1; shift; fi
caller_args --config "$CONFIG" "$@"

exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$NPROC_PER_NODE" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m chunksft.train "${CALLER_ARGS[@]}"
