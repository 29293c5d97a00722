#!/usr/bin/env bash
# tests/fuzz/coverage.sh: how much of each parser the fuzz corpora reach. It builds the harnesses
# once more with clang's source-based coverage (no sanitizers; in build/fuzz-cov), replays every input
# of build/fuzz/corpus/<name>/ (what tests/fuzz/run.sh collected: the seeds and every input that found
# new code) through its harness, and prints line, function and branch coverage of the files that the
# harness is there to test. Run tests/fuzz/run.sh first: without a corpus there is nothing to replay.
#
# usage: tests/fuzz/coverage.sh [HARNESS ...]     (default: every tests/fuzz/fuzz_*.c)
# Environment: CLANG (default clang), LLVM_PROFDATA (default llvm-profdata), LLVM_COV (default llvm-cov).
set -euo pipefail
cd "$(dirname "$0")/../.."

harnesses=("$@")
if [ ${#harnesses[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do harnesses+=("$(basename "$f" .c)"); done
fi
CLANG=${CLANG:-clang}
PROFDATA=${LLVM_PROFDATA:-llvm-profdata}
COV=${LLVM_COV:-llvm-cov}
for tool in "$CLANG" "$PROFDATA" "$COV"; do
    command -v "$tool" >/dev/null || { echo "tests/fuzz/coverage.sh: $tool not found (Debian packages clang, llvm)" >&2; exit 1; }
done

# The files each harness exists to test (the parser and what it calls to check what it read).
subject() {
    case "$1" in
        fuzz_safetensors) echo common/io/safetensors.c ;;
        fuzz_checkpoint) echo common/io/checkpoint.c common/model/model.c common/model/config.c ;;
        fuzz_state) echo common/model/train.c common/model/config.c ;;
        fuzz_config) echo common/model/config.c ;;
        fuzz_runjson) echo common/cli/run.c ;;
        fuzz_idx | fuzz_cifar) echo common/io/data.c ;;
        fuzz_png) echo common/io/png.c ;;
        fuzz_cli) echo common/cli/cli.c ;;
        *) echo "tests/fuzz/coverage.sh: no subject files listed for $1" >&2; exit 2 ;;
    esac
}

out=build/fuzz-cov
mkdir -p "$out"
cov=(-fprofile-instr-generate -fcoverage-mapping)
make --no-print-directory BUILD="$out" CC="$CLANG" NO_OMP=1 NO_CUDA=1 \
     CFLAGS_EXTRA="-fsanitize=fuzzer-no-link ${cov[*]}" "$out/libmsdiff.a" >"$out.log" 2>&1 ||
    { cat "$out.log" >&2; exit 1; }
cflags=(-std=c11 -O1 -g -I. -D_POSIX_C_SOURCE=200809L "${cov[@]}")
for h in "${harnesses[@]}"; do
    name=${h#fuzz_}
    corpus=build/fuzz/corpus/$name
    if [ ! -d "$corpus" ]; then
        echo "tests/fuzz/coverage.sh: no corpus in $corpus (run tests/fuzz/run.sh $h first)" >&2
        exit 1
    fi
    "$CLANG" "${cflags[@]}" -fsanitize=fuzzer -o "$out/$h" "tests/fuzz/$h.c" tests/fuzz/fuzz.c \
        "$out/libmsdiff.a" -lcjson -lpng -lz -lm
    rm -f "$out/$h".*.profraw
    # -runs=0: execute every input of the corpus once, fuzz nothing
    LLVM_PROFILE_FILE="$out/$h.%p.profraw" "$out/$h" -runs=0 "$corpus" >"$out/$h.log" 2>&1
    "$PROFDATA" merge -sparse "$out/$h".*.profraw -o "$out/$h.profdata"
    echo "== $h: $(find "$corpus" -type f | wc -l) corpus inputs"
    # Per file: the functions the corpus enters at all, and within those the share of lines and
    # branches it runs (a file's other functions, such as the training step beside the state loader,
    # are not what the harness is for).
    # shellcheck disable=SC2046
    "$COV" report -show-functions "$out/$h" -instr-profile="$out/$h.profdata" $(subject "$h") |
        awk -v root="$PWD/" '
            /^File / { if (file) show(); file = $2; gsub(/[\047:]/, "", file); sub(root, "", file); nf = nr = l = lm = b = bm = 0; next }
            NF == 10 && $1 != "TOTAL" && $5 ~ /^[0-9]+$/ { nf++; if ($5 > $6) { nr++; l += $5; lm += $6; b += $8; bm += $9 } }
            function show() { printf "  %-28s %2d of %2d functions entered; in them %5.1f%% of %4d lines, %5.1f%% of %4d branches\n", file, nr, nf, l ? 100 * (l - lm) / l : 0, l, b ? 100 * (b - bm) / b : 0, b }
            END { if (file) show() }'
done
