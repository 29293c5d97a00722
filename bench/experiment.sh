#!/usr/bin/env bash
# bench/experiment.sh: the paper's training-efficiency claim, measured at the mini scale on
# Fashion-MNIST. Four arms see the same training images, in the same order of batches where they can:
#   unified      one mini network (preset mini) for every noise level
#   separate     three whole mini networks, one per stage of the paper's EDM boundaries (2.5103, 7.6577)
#   ms-edm       mini-ms: shared encoder, decoders 48/32/8, the paper's EDM boundaries
#   ms-cluster   mini-ms with the boundaries msdiff cluster's Algorithm 1 finds on Fashion-MNIST
# Each arm keeps an EMA snapshot every EVERY images; each snapshot gets msdiff eval's FD (N samples
# with Heun, 18 steps, against the test set) and held-out loss per stage. bench/experiment_report.py
# turns the folder into results.csv, the plots and a table.
#
# Usage, from anywhere:   bench/experiment.sh [DIR]          (default DIR: runs/experiment)
# Settings (environment): IMAGES per arm (default 256000), EVERY (51200), BATCH (128), N (2000),
#   N_FINAL for the last snapshot (default N), DATA (fmnist), BACKEND (msdiff's default), ARMS (all
#   four), MSDIFF (./msdiff), K for the clustering (3000), LOSS_IMAGES for the held-out loss (2000),
#   EVALS (all, or final: only the last snapshots; a later run with all adds the others).
# It resumes: an arm whose run folder exists is continued (--resume), an eval whose JSON exists is
# kept, so a run that was cut short can be started again with the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-runs/experiment}
IMAGES=${IMAGES:-256000}
EVERY=${EVERY:-51200}
BATCH=${BATCH:-128}
N=${N:-2000}
N_FINAL=${N_FINAL:-$N}
DATA=${DATA:-fmnist}
K=${K:-3000}
LOSS_IMAGES=${LOSS_IMAGES:-2000}
ARMS=${ARMS:-"unified separate ms-edm ms-cluster"}
MSDIFF=${MSDIFF:-./msdiff}
BE=()
[ -n "${BACKEND:-}" ] && BE=(--backend "$BACKEND")
# The same optimiser settings for every arm: Adam at 1e-3 after a 10k-image ramp; EMA as msdiff's
# default (half-life 0.05 x images seen at this length); dropout as the presets (0.1); seed 0.
TRAIN_FLAGS=(--batch "$BATCH" --lr 1e-3 --lr-rampup 10000 --seed 0 --data "$DATA" --log-seconds 30)

if (( IMAGES % BATCH || EVERY % BATCH || IMAGES % EVERY )); then
    echo "experiment: IMAGES ($IMAGES) must be a multiple of EVERY ($EVERY), and both of BATCH ($BATCH)" >&2
    exit 2
fi
STEPS=$((IMAGES / BATCH))
SNAP=$((EVERY / BATCH))
mkdir -p "$DIR"
T0=$(date +%s)
say() { echo "== [$(($(date +%s) - T0)) s] $*"; }
{
    echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC') images=$IMAGES every=$EVERY batch=$BATCH n=$N n_final=$N_FINAL data=$DATA k=$K loss_images=$LOSS_IMAGES"
    echo "train flags: ${TRAIN_FLAGS[*]} ${BE[*]}"
    "$MSDIFF" backends
    "$MSDIFF" version
} >> "$DIR/settings.txt" # one block per invocation

# The stage boundaries of Algorithm 1 on the training images (the ms-cluster arm).
if [[ " $ARMS " == *" ms-cluster "* ]]; then
    if [ ! -s "$DIR/cluster.txt" ]; then
        say "msdiff cluster --method denoiser --K $K"
        "$MSDIFF" cluster --method denoiser --data "$DATA" --K "$K" --quiet "${BE[@]}" > "$DIR/cluster.txt.part"
        mv "$DIR/cluster.txt.part" "$DIR/cluster.txt"
    fi
    CLUSTER=$(sed -n 's/^--boundaries //p' "$DIR/cluster.txt")
    [ -n "$CLUSTER" ] || { echo "experiment: no --boundaries line in $DIR/cluster.txt" >&2; exit 1; }
    echo "cluster boundaries: $CLUSTER"
fi

arm_flags() {
    case $1 in
        unified) echo "--preset mini" ;;
        separate) echo "--preset mini --separate --decoders 32,32,32 --boundaries 2.5103,7.6577" ;;
        ms-edm) echo "--preset mini-ms --boundaries 2.5103,7.6577" ;;
        ms-cluster) echo "--preset mini-ms --boundaries $CLUSTER" ;;
        *) echo "experiment: unknown arm '$1' (expected unified, separate, ms-edm, ms-cluster)" >&2; return 1 ;;
    esac
}

# The step a run folder's log has reached (0 without one).
done_steps() { [ -s "$1/log.csv" ] && tail -n 1 "$1/log.csv" | cut -d, -f1 | grep -E '^[0-9]+$' || echo 0; }

for arm in $ARMS; do
    flags=$(arm_flags "$arm")
    run="$DIR/$arm"
    if [ "$(done_steps "$run")" -ge "$STEPS" ]; then
        say "$arm: already trained to $STEPS steps"
    elif [ -f "$run/state.safetensors" ]; then
        say "$arm: continuing to $STEPS steps"
        # run.json keeps the intervals; given again for a run folder of an older msdiff, which did not
        "$MSDIFF" train --out "$run" --resume --steps "$STEPS" --snapshot-every "$SNAP" --ckpt-every "$SNAP" \
            "${BE[@]}" --log-seconds 30 >> "$run/train.log" 2>&1 || { tail -n 5 "$run/train.log" >&2; exit 1; }
    else
        say "$arm: training $STEPS steps of $BATCH ($flags)"
        rm -rf "$run"
        # shellcheck disable=SC2086
        "$MSDIFF" train --out "$run" --steps "$STEPS" --snapshot-every "$SNAP" --ckpt-every "$SNAP" \
            "${TRAIN_FLAGS[@]}" "${BE[@]}" $flags > "$DIR/$arm.train.log" 2>&1 ||
            { cat "$DIR/$arm.train.log" >&2; exit 1; }
        mv "$DIR/$arm.train.log" "$run/train.log"
    fi
    tail -n 2 "$run/train.log" 2> /dev/null || true
    "$MSDIFF" info --model "$run/ema.safetensors" --json > "$run/info.json"
done

# The evaluations: the last snapshot of every arm first (N_FINAL samples), then the others by images
# seen, arm after arm, so that a run cut short still compares the arms at the same points.
eval_one() { # arm step n
    local run="$DIR/$1" tag
    tag=$(printf 'step%08d' "$2")
    [ -s "$run/eval-$tag.json" ] && return 0
    say "eval $1 at step $2 ($(($2 * BATCH)) images), n $3"
    "$MSDIFF" eval --model "$run/ema-$tag.safetensors" --data "$DATA" --n "$3" --loss-images "$LOSS_IMAGES" --json "${BE[@]}" \
        > "$run/eval-$tag.json.part"
    mv "$run/eval-$tag.json.part" "$run/eval-$tag.json"
}
for arm in $ARMS; do eval_one "$arm" "$STEPS" "$N_FINAL"; done
if [ "${EVALS:-all}" = final ]; then
    say "done with the last snapshots (EVALS=final): $DIR"
    exit 0
fi
for ((s = SNAP; s < STEPS; s += SNAP)); do
    for arm in $ARMS; do eval_one "$arm" "$s" "$N"; done
done
say "done: $DIR (bench/experiment_report.py $DIR makes the table and plots)"
