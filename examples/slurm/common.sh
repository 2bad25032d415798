# shellcheck shell=bash
# What the SLURM launchers *.sbatch share: ../common.sh (data, tokenizer and outputs, the
# hyper-parameters per model preset, SlimPajama's blend, pretrain_dwm.py's flag groups), with
# srun in place of torchrun. A launcher sets REPO_DIR (SLURM runs a copy of the batch script, so it
# cannot locate the repository from its own path), MODEL_PRESET, its OUTPUT_DIR default and NNODES
# and NTASKS (from SLURM; outside it, for the dry run, its #SBATCH header's), sources this file,
# sets DWM_ARGS (`set_dwm_args` for the DWM trained alongside) and, to train on other data than
# SlimPajama's blend, TRAIN_DATA, and ends with `srun_launch "$@"`.
: "${REPO_DIR:?}" "${NNODES:?}" "${NTASKS:?}"

# Cluster: the rendezvous on the allocation's first node. pretrain_dwm.py reads its rank from
# SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (no torchrun).
if [[ -n ${SLURM_JOB_NODELIST:-} ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')  # awk reads it all: no SIGPIPE under pipefail
fi
PYTHON=${PYTHON:-python}
# CONTAINER_IMAGE (e.g. image.sqsh): the tasks run in that image (pyxis), with CONTAINER_MOUNTS.
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/data:/data,$REPO_DIR:$REPO_DIR}

# shellcheck source-path=SCRIPTDIR source=../common.sh
source "$REPO_DIR/examples/common.sh"
export MASTER_ADDR MASTER_PORT

# srun pretrain_dwm.py (PRETRAIN_CMD) as NTASKS tasks on NNODES nodes: one task per GPU, plus the
# DWM's (DWM_RANKS: the header's --ntasks-per-node counts them). DRY_RUN=1 prints the srun command
# instead of running it. A failed run exits with its exit code; a clean one, requeue_unless_done.
srun_launch() {
    local srun_args=(--nodes "$NNODES" --ntasks "$NTASKS" --kill-on-bad-exit=1)
    if [[ -n $CONTAINER_IMAGE ]]; then
        srun_args+=(--container-image "$CONTAINER_IMAGE" --container-mounts "$CONTAINER_MOUNTS"
                    --container-workdir "$REPO_DIR")
    fi
    set_pretrain_command "$@"
    local cmd=(srun "${srun_args[@]}" "$PYTHON" "${PRETRAIN_CMD[@]}")
    exit_if_dry_run "${cmd[@]}"
    mkdir -p "$OUTPUT_DIR"
    local status=0
    "${cmd[@]}" || status=$?
    if (( status != 0 )); then
        echo "training failed (exit code $status): not requeueing" >&2
        exit "$status"
    fi
    requeue_unless_done
}

# Pre-emption: SLURM sends USR1 120 s before the time limit (#SBATCH --signal=USR1@120), the run
# saves a checkpoint and exits 0 (--exit-signal-handler). A clean exit before TRAIN_ITERS means such
# a signal or an --exit-* stop: requeue (#SBATCH --requeue); the requeued job resumes from the
# checkpoint (--load).
requeue_unless_done() {
    local done_iters
    done_iters=$(cat "$CHECKPOINT_DIR/latest_checkpointed_iteration.txt" 2>/dev/null || echo 0)
    if [[ $done_iters =~ ^[0-9]+$ ]] && (( done_iters < TRAIN_ITERS )); then
        echo "checkpoint at iteration $done_iters of $TRAIN_ITERS: requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
    fi
}
