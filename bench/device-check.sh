#!/usr/bin/env bash
# bench/device-check.sh: the CUDA backend's whole check on a GPU machine, in one run of under 8 minutes:
#   1. build for sm_90 (unpacking the Debian packages of .device/debs when the machine lacks them);
#   2. the CUDA conformance suites against ref (tests/test_cuda_*.c: the op suites, and the network's);
#   3. compute-sanitizer's memcheck, racecheck and synccheck on the op suites at their small shapes;
#   4. benchmarks: msdiff's training step (mini and cifar10, batch 128) and sampling forward (batch 512)
#      next to PyTorch eager fp32 with TF32 off on the same GPU (bench/torch_compare.py), and msdiff's
#      per-op timings at the mini shapes;
#   5. torch_compare's check of `msdiff denoise --backend cuda` against PyTorch on every stage;
# then prints a short table last. The summary goes to $OUT/summary.txt (default OUT /tmp/msd-device),
# every log into $OUT/logs.tgz.
#
# Before a device run, on the development machine: bench/device-deps.sh (fetches the packages into
# .device/debs), and carry .device with the run. Usage, from the repository root on the GPU machine:
#     bench/device-check.sh            QUICK=1 bench/device-check.sh   (skips the benchmarks)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/msd-device}
source bench/device-env.sh # creates $OUT; CUDA on PATH; NVCC, step, device_deps
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
row() { printf '%-44s %s\n' "$1" "$2" >> "$SUMMARY"; }
FAILED=0 # checks that failed, timed out or did not happen; the exit status is 1 when any did
fail() { row "$1" "$2"; FAILED=$((FAILED + 1)); }

# Run a command with a time limit, its output in $OUT/<name>.log (and its tail on the console);
# records PASS/FAIL/TIMEOUT in the summary. A suite that skips (no device) counts as a failure here:
# on a GPU machine it means the check did not happen.
run_logged() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 4 "$OUT/$name.log"
    case $rc in
        0) if grep -q "skipped" "$OUT/$name.log"; then fail "$name" "SKIPPED: $(grep -m1 skipped "$OUT/$name.log")"
           else row "$name" "PASS ($(grep -m1 -o '[0-9]*%: Checks: [0-9]*, Failures: [0-9]*, Errors: [0-9]*' "$OUT/$name.log"))"; fi ;;
        124) fail "$name" "TIMEOUT after ${limit}s" ;;
        *) fail "$name" "FAIL (exit $rc; see $name.log)" ;;
    esac
    return $rc
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$NVCC" --version | tail -n 1
PY=$(command -v python3 || echo python3-not-found)
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tee "$OUT/torch.txt"
row "GPU" "$(head -n 1 "$OUT/gpu.txt")"

# The op suites (tests/test_cuda_*.c but the network's)
OP_SUITES="test_cuda_memory test_cuda_elementwise test_cuda_norm test_cuda_gemm test_cuda_denoiser"

step "dependencies"
device_deps || exit 1

step "build (sm_90)"
J=$(nproc)
if ! make -j"$J" NVCC="$NVCC" "${make_vars[@]}" all $(printf 'build/tests/%s ' $OP_SUITES) build/tests/test_cuda_net \
        build/bench/bench > "$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log"
    row "build" "FAIL (see build.log)"
    cat "$SUMMARY"
    exit 1
fi
if nm build/libmsdiff.a 2> /dev/null | grep -q ' [DR] msd_backend_cuda$'; then row "build" "ok (cuda/ by nvcc: sm_90 + PTX)"
else fail "build" "built WITHOUT cuda/ (nvcc not found or NO_CUDA)"; fi
./msdiff backends | tee -a "$OUT/build.log"

step "conformance: ops"
for suite in $OP_SUITES; do run_logged "$suite" 120 "build/tests/$suite"; done

# The benchmarks come before the longer checks, so that a run cut short still has them.
if [ "${QUICK:-0}" != 1 ]; then
    step "msdiff benchmarks"
    B="$OUT/bench.csv"
    : > "$B"
    for cfg in mini cifar10; do
        timeout 60 build/bench/bench --backends cuda --only train --preset "$cfg" --batch 128 --csv >> "$B" \
            2>> "$OUT/bench.err" || fail "bench train $cfg" "FAIL (exit $?; see bench.err)"
        timeout 120 build/bench/bench --backends cuda --only sample --preset "$cfg" --batch 512 --csv >> "$B" \
            2>> "$OUT/bench.err" || fail "bench sample $cfg" "FAIL (exit $?; see bench.err)"
    done
    grep '^# cuda' "$B" | head -n 1
    step "PyTorch eager fp32 (TF32 off) on the same GPU"
    T="$OUT/torch.csv"
    : > "$T"
    for cfg in mini cifar10; do
        timeout 60 "$PY" bench/torch_compare.py bench --device cuda --config "$cfg" --batch 128 --only train \
            --reps 10 --warmup 3 --csv >> "$T" 2>> "$OUT/torch.err" || fail "PyTorch train $cfg" "FAIL (exit $?; see torch.err)"
        timeout 45 "$PY" bench/torch_compare.py bench --device cuda --config "$cfg" --batch 512 --only sample \
            --reps 10 --warmup 3 --csv >> "$T" 2>> "$OUT/torch.err" || fail "PyTorch sample $cfg" "FAIL (exit $?; see torch.err)"
    done
    grep '^# torch' "$T" | head -n 1
fi

step "conformance: network, training step, Heun"
run_logged test_cuda_net 120 build/tests/test_cuda_net

step "compute-sanitizer: memcheck, racecheck, synccheck (op suites, small shapes)"
if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck synccheck; do
        for suite in $OP_SUITES; do
            MSD_TEST_SMALL=1 run_logged "$tool-$suite" 90 compute-sanitizer --tool "$tool" --error-exitcode 3 \
                "build/tests/$suite"
            grep -m1 "ERROR SUMMARY\|RACECHECK SUMMARY" "$OUT/$tool-$suite.log" | sed "s/^/  $tool $suite: /" |
                tee -a "$SUMMARY"
        done
    done
else
    fail "compute-sanitizer" "not run (no compute-sanitizer on this machine)"
fi

if [ "${QUICK:-0}" != 1 ]; then
    timeout 40 build/bench/bench --backends cuda --only ops --batch 128 > "$OUT/ops.txt" 2>> "$OUT/bench.err" ||
        fail "bench ops" "FAIL (exit $?; see bench.err)"
fi

step "msdiff denoise --backend cuda against PyTorch (mini-ms, every stage)"
timeout 60 "$PY" bench/torch_compare.py compare --backend cuda --device cuda > "$OUT/compare.log" 2>&1 ||
    fail "torch_compare compare" "FAIL (exit $?; see compare.log)"
grep '^stage' "$OUT/compare.log" | sed 's/^/  /' | tee -a "$SUMMARY"
tail -n 2 "$OUT/compare.log"

# ---------------------------------------------------------------------------------------------------
# The table: images per second, msdiff cuda against PyTorch, and the target ratio of each row: a
# training step at least 2x PyTorch's on mini and 0.8x on cifar10 (batch 128); sampling only reported.
if [ "${QUICK:-0}" != 1 ]; then
    msd() { # section, preset, batch -> images/s of the first matching line
        grep "^$1,cuda," "$OUT/bench.csv" | grep -F "$2" | awk -F, -v b="$3" '$(NF-9) == b {print $NF; exit}'
    }
    tch() { # what, config, batch -> images/s
        awk -F, -v w="$1" -v c="$2" -v b="$3" '$1 == w && $2 == c && $3 == b {print $NF; exit}' "$OUT/torch.csv"
    }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-" }'; }
    {
        echo
        printf '%-34s %12s %12s %8s %s\n' "images/s" "msdiff cuda" "PyTorch" "ratio" "target"
        for spec in "train mini 128 >=2x" "train cifar10 128 >=0.8x" "sample mini 512 reported" "sample cifar10 512 reported"; do
            set -- $spec
            if [ "$1" = train ]; then m=$(msd train "train step $2 (" "$3"); else m=$(msd sample "sampling forward $2 stage 0" "$3"); fi
            t=$(tch "$1" "$2" "$3")
            printf '%-34s %12s %12s %8s %s\n' "$1 $2 batch $3" "${m:--}" "${t:--}" "$(ratio "${m:-0}" "${t:-0}")" "$4"
        done
    } >> "$SUMMARY"
fi
step "done"
# The logs travel as one archive beside the summary: two files to copy back from the GPU machine.
(cd "$OUT" && tar czf logs.tgz --exclude=logs.tgz --exclude=summary.txt -- * && find . -maxdepth 1 -type f \
    ! -name logs.tgz ! -name summary.txt -delete)
echo
echo "==================== device-check summary ===================="
cat "$SUMMARY"
echo "device-check: $FAILED check(s) failed, timed out or did not run"
[ "$FAILED" -eq 0 ]
