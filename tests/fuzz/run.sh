#!/usr/bin/env bash
# tests/fuzz/run.sh: build the libFuzzer harnesses of tests/fuzz/ (clang, with AddressSanitizer and
# UndefinedBehaviorSanitizer), write their seed corpora from real files (seeds.c), and run each.
# Any finding (a crash, a sanitizer report, a leak, an allocation over the limit, a timeout) fails the
# run; the input that caused it is kept as build/fuzz/findings/<harness>/crash-* (or leak-*, oom-*,
# timeout-*) and can be replayed with build/fuzz/<harness> FILE.
#
# usage: tests/fuzz/run.sh [--seconds S | --runs N] [HARNESS ...]
#   --seconds S   fuzz each harness for S seconds (default 60)
#   --runs N      or for N inputs each, from a fixed random seed, so that the run is the same every
#                 time (what CI's smoke run uses)
#   HARNESS       fuzz_safetensors, fuzz_checkpoint, ... (default: every tests/fuzz/fuzz_*.c)
# Environment: CLANG, the compiler (default clang).
set -euo pipefail
cd "$(dirname "$0")/../.."

budget=(-max_total_time=60)
harnesses=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) budget=(-max_total_time="$2"); shift 2 ;;
        --runs) budget=(-runs="$2" -seed=1); shift 2 ;;
        -h|--help) sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        fuzz_*) harnesses+=("$1"); shift ;;
        *) echo "tests/fuzz/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ ${#harnesses[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do harnesses+=("$(basename "$f" .c)"); done
fi

CLANG=${CLANG:-clang}
command -v "$CLANG" >/dev/null || { echo "tests/fuzz/run.sh: $CLANG not found (Debian package clang)" >&2; exit 1; }
out=build/fuzz
mkdir -p "$out"
san=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)

# The library, instrumented for coverage and built with the sanitizers (no OpenMP, no CUDA: the
# parsers use neither), in its own build folder.
make --no-print-directory BUILD="$out" CC="$CLANG" SANITIZE=1 NO_OMP=1 NO_CUDA=1 \
     CFLAGS_EXTRA=-fsanitize=fuzzer-no-link "$out/libmsdiff.a" >"$out.log" 2>&1 ||
    { cat "$out.log" >&2; exit 1; }
libs=(-lcjson -lpng -lz -lm)
cflags=(-std=c11 -O1 -g -I. -D_POSIX_C_SOURCE=200809L "${san[@]}")
for h in "${harnesses[@]}"; do
    "$CLANG" "${cflags[@]}" -fsanitize=fuzzer -o "$out/$h" "tests/fuzz/$h.c" tests/fuzz/fuzz.c "$out/libmsdiff.a" "${libs[@]}"
done
"$CLANG" "${cflags[@]}" -fsanitize=fuzzer-no-link -o "$out/seeds" tests/fuzz/seeds.c "$out/libmsdiff.a" "${libs[@]}"
rm -rf "$out/seeds-corpus"
"$out/seeds" "$out/seeds-corpus"

failed=()
for h in "${harnesses[@]}"; do
    name=${h#fuzz_}
    corpus="$out/corpus/$name"
    mkdir -p "$corpus" "$out/findings/$name"
    # the seeds of this harness (the networks' files serve both the safetensors and checkpoint harnesses)
    [ -d "$out/seeds-corpus/$name" ] && cp -n "$out/seeds-corpus/$name"/* "$corpus"/ 2>/dev/null || true
    echo "fuzz: $h (${budget[*]})"
    # -malloc_limit_mb: an allocation larger than any real model or data set needs is a finding
    if ! "$out/$h" "${budget[@]}" -rss_limit_mb=2560 -malloc_limit_mb=2048 -timeout=20 \
           -artifact_prefix="$out/findings/$name/" -print_final_stats=1 "$corpus" >"$out/$h.log" 2>&1; then
        failed+=("$h")
        tail -40 "$out/$h.log" >&2
    fi
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^#[0-9]+.*DONE' "$out/$h.log" |
        sed "s/^/  /" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FINDINGS in ${failed[*]} (inputs under $out/findings/)" >&2
    exit 1
fi
echo "fuzz: ${#harnesses[@]} harnesses, no findings"
