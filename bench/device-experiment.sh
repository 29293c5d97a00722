#!/usr/bin/env bash
# bench/device-experiment.sh: bench/experiment.sh on a GPU machine in one run, plus the candidates for
# the shipped model. Steps:
#   1. build (unpacking .device/debs when the machine lacks the headers: bench/device-env.sh);
#   2. tests/test_cuda_net on the device, a guard: the network, training steps and Heun against ref;
#   3. bench/experiment.sh with the cuda backend (Fashion-MNIST from .device/fmnist when the Debian
#      package is absent: copy /usr/share/datasets/fashion-mnist/*.gz there and carry .device);
#      training every arm and evaluating its last snapshot first;
#   4. each multistage arm's final EMA exported as F16 (msdiff export --fp16) and evaluated with
#      N_SHIP samples; an 8x8 grid of samples from every arm;
#   5. the evaluations of the other snapshots, last: a run cut short by its time limit still has
#      everything above. The experiment folder without its checkpoints goes to $OUT/experiment.tgz
#      (after step 4 and again at the end), the F16 files beside it.
# Settings: those of bench/experiment.sh (IMAGES, EVERY, N, N_FINAL, ...); N_SHIP (default N_FINAL,
# else 10000); BACKEND (default cuda; another skips the guard, for a dry run on a CPU).
# Usage, from the repository root on the GPU machine: bench/device-experiment.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/msd-experiment}
source bench/device-env.sh # creates $OUT; CUDA on PATH; NVCC, step, device_deps
DIR=runs/experiment
N_SHIP=${N_SHIP:-${N_FINAL:-10000}}
BACKEND=${BACKEND:-cuda}

step "machine and build"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
device_deps || exit 1
if ! make -j"$(nproc)" NVCC="$NVCC" "${make_vars[@]}" all build/tests/test_cuda_net > "$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log"
    exit 1
fi
./msdiff backends

step "guard: tests/test_cuda_net"
if [ "$BACKEND" = cuda ] && { ! timeout 120 build/tests/test_cuda_net > "$OUT/test_cuda_net.log" 2>&1 || grep -q skipped "$OUT/test_cuda_net.log"; }; then
    tail -n 20 "$OUT/test_cuda_net.log"
    echo "device-experiment: the CUDA network suite did not pass; no experiment"
    exit 1
fi
tail -n 1 "$OUT/test_cuda_net.log" 2> /dev/null

DATA=fmnist
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || DATA=fmnist:.device/fmnist
step "bench/experiment.sh, training and the last snapshots (data $DATA)"
EVALS=final BACKEND=$BACKEND DATA=$DATA bench/experiment.sh "$DIR" 2>&1 | tee "$OUT/experiment.log"
rc=${PIPESTATUS[0]}

step "shipped-model candidates: F16 exports, FD at $N_SHIP, sample grids"
for arm in ms-edm ms-cluster; do
    [ -f "$DIR/$arm/ema.safetensors" ] || continue
    ./msdiff export --model "$DIR/$arm" --out "$OUT/$arm-fp16.safetensors" --fp16 | tee "$DIR/$arm/export.txt"
    if timeout 150 ./msdiff eval --model "$OUT/$arm-fp16.safetensors" --data "$DATA" --n "$N_SHIP" --json \
            --loss-images "${LOSS_IMAGES:-2000}" --backend "$BACKEND" > "$DIR/$arm/eval-fp16.json"; then
        cut -c1-120 "$DIR/$arm/eval-fp16.json"
    else
        echo "device-experiment: the eval of $arm's F16 export failed or ran past 150 s"
    fi
done
for arm in unified separate ms-edm ms-cluster; do
    [ -f "$DIR/$arm/ema.safetensors" ] || continue
    ./msdiff sample --model "$DIR/$arm" --seeds 0-63 --grid "$DIR/$arm/samples.png" --backend "$BACKEND" \
        > "$DIR/$arm/sample.log" 2>&1 || echo "device-experiment: sampling $arm failed (see $arm/sample.log)"
done
tar czf "$OUT/experiment.tgz" --exclude='*.safetensors' "$DIR"

step "bench/experiment.sh again: the other snapshots"
BACKEND=$BACKEND DATA=$DATA bench/experiment.sh "$DIR" 2>&1 | tee -a "$OUT/experiment.log"
rc2=${PIPESTATUS[0]}
tar czf "$OUT/experiment.tgz" --exclude='*.safetensors' "$DIR"
ls -l "$OUT"
step "done (experiment exit status $rc, then $rc2)"
[ "$rc" = 0 ] && [ "$rc2" = 0 ]
