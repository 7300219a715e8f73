#!/usr/bin/env bash
# Launch chunksft training with the DeepSpeed launcher.
#
#   launch/train.sh                      the default job (make train): stage 1 block-diffusion ("bd3")
#                                        training of the tiny backbone (tiny_bd3.yaml), its export,
#                                        stage 2 chunk_sft of the refinement head on the frozen
#                                        backbone (tiny.yaml), its export, then the held-out test
#                                        accuracy table (without / with refinement)
#   launch/train.sh CONFIG [--key value ...]   one run of CONFIG (e.g. configs/train/qwen3_1.7b_sft.yaml)
#
# Environment (defaults: one node, 2 ranks, CPU + gloo when no GPU is visible):
#   NPROC_PER_NODE  ranks per node (default: number of GPUs, else 2; the default job on CPU: 1)
#   NNODES          nodes (default 1)
#   HOSTFILE        DeepSpeed hostfile ("host slots=N" lines); with NNODES > 1 and no NODE_RANK the
#                   launcher starts every node over ssh (pdsh)
#   NODE_RANK       this node's rank, for ssh-less clusters: run this script once per node with the
#                   same MASTER_ADDR / MASTER_PORT (a hostfile of NNODES x NPROC_PER_NODE is made
#                   when HOSTFILE is not given)
#   MASTER_ADDR     rendezvous address (default 127.0.0.1), MASTER_PORT (default 29500)
#   OUTPUT_ROOT     where the default job writes (default runs/)
#   DATASET         the default job on your own data: a .jsonl/.json/.parquet file in any supported
#                   format (held-out rows: the file's question-hash split) or a hub name
set -euo pipefail
source "$(dirname "$0")/caller_paths.sh"   # before the cd: paths relative to the caller
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    export DS_ACCELERATOR=cpu
    DEFAULT_NPROC=2
    # The default job's tiny model on CPU: one rank on all cores beats two one-thread ranks of half
    # the batch (0.238 vs 0.281 s per step of 32 rows: ZeRO-3's collectives cost more than they
    # split; README "The default job"). A CONFIG run defaults to 2 CPU ranks.
    [[ $# -gt 0 ]] || DEFAULT_NPROC=1
else
    DEFAULT_NPROC=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$DEFAULT_NPROC}
NNODES=${NNODES:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -n "${DS_ACCELERATOR:-}" ]]; then
    # CPU ranks of one node share its cores: one thread each unless told otherwise.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC_PER_NODE > 0 ? $(nproc) / NPROC_PER_NODE : 1 ))}
fi

check_hostfile() {  # check_hostfile FILE: every node resolves and NNODES fits, else one error line
    local file=$1 host hosts=()
    if [[ ! -r "$file" ]]; then
        echo "error: launch/train.sh: HOSTFILE $file is not readable; pass a file of 'host slots=N' lines" >&2
        exit 2
    fi
    while read -r host _; do
        [[ -z "$host" || "$host" == \#* ]] || hosts+=("$host")
    done < "$file"
    if (( ${#hosts[@]} < NNODES )); then
        echo "error: launch/train.sh: HOSTFILE $file lists ${#hosts[@]} node(s) but NNODES=$NNODES; add the missing nodes or lower NNODES" >&2
        exit 2
    fi
    for host in "${hosts[@]}"; do
        if ! getent hosts "$host" >/dev/null; then
            echo "error: launch/train.sh: HOSTFILE $file: node '$host' does not resolve; fix its name (DNS, /etc/hosts) or remove it and lower NNODES" >&2
            exit 2
        fi
    done
}

launch() {  # launch ARGS... : python -m chunksft.train ARGS under the deepspeed launcher
    local hostfile=${HOSTFILE:+$(caller_path "$HOSTFILE")}
    local args=(--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
    if [[ -n "${NODE_RANK:-}" ]]; then
        if [[ -z "$hostfile" ]]; then
            hostfile=$(mktemp)
            for ((n = 0; n < NNODES; n++)); do echo "node$n slots=$NPROC_PER_NODE"; done > "$hostfile"
        fi
        args+=(--hostfile "$hostfile" --no_ssh --node_rank "$NODE_RANK")
    elif [[ -n "$hostfile" ]]; then
        check_hostfile "$hostfile"
        args+=(--hostfile "$hostfile" --num_nodes "$NNODES" --num_gpus "$NPROC_PER_NODE")
    else
        args+=(--num_gpus "$NPROC_PER_NODE")
    fi
    # Ctrl-C reaches every process of the terminal's group: each rank finishes its step, saves and
    # stops with one line, and DeepSpeed's launcher waits for them. The `deepspeed` runner above it
    # has no handler on one node and would die with a KeyboardInterrupt traceback: it ignores SIGINT.
    (trap '' INT; exec deepspeed "${args[@]}" --module chunksft.train "$@")
}

if [[ $# -gt 0 ]]; then
    caller_args --config "$@"
    launch "${CALLER_ARGS[@]}"
    exit
fi

# The default job.
OUT=$(caller_value output_dir "${OUTPUT_ROOT:-runs}")
DATASET=${DATASET:+$(caller_path "$DATASET")}
DATA=()
if [[ -n "${DATASET:-}" ]]; then
    DATA=(--dataset_name "$DATASET")
fi
launch --config configs/train/tiny_bd3.yaml --output_dir "$OUT/tiny_bd3" "${DATA[@]}"
"$PY" -m chunksft.export --checkpoint "$OUT/tiny_bd3" --output "$OUT/tiny_bd3/hf"
launch --config configs/train/tiny.yaml --output_dir "$OUT/tiny" --name_or_path "$OUT/tiny_bd3/hf" "${DATA[@]}"
"$PY" -m chunksft.export --checkpoint "$OUT/tiny" --output "$OUT/tiny/hf"
echo "final held-out evaluation (test rows never seen in training; also in $OUT/tiny/test_accuracy.json):"
"$PY" -m chunksft.evaluate --model "$OUT/tiny/hf" --dataset "${DATASET:-bundled}" --split test --rows 500 \
    --output "$OUT/tiny/test_accuracy.json"
