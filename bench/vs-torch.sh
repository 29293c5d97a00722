#!/bin/sh
# bench/vs-torch.sh: the README's Performance table in one run. On the `mini` config (unified), batch
# 64, $THREADS threads (default 2): fast/'s training step and sampling forward against PyTorch's
# (bench/torch_compare.py) under each Python interpreter given, ref/'s training step (batch 8: its
# images/s do not improve with batch), and torch_compare's check of `msdiff denoise` against PyTorch
# on every stage of mini-ms with the first interpreter.
#
#   bench/vs-torch.sh [PYTHON ...]      (default: /usr/bin/python3, Debian's python3-torch)
#   e.g. bench/vs-torch.sh /usr/bin/python3 /path/to/venv/bin/python   (a newer torch from pip)
#
# Run it on an idle machine: every number comes from this one run, one after the other.
set -eu
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
export OMP_NUM_THREADS="$THREADS"
[ $# -gt 0 ] || set -- /usr/bin/python3
make -s all build/bench/bench >/dev/null

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "vs-torch: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $THREADS threads, load $(cut -d' ' -f1-3 /proc/loadavg)"
build/bench/bench --backends fast --only train --preset mini --csv > "$tmp/msdiff.csv"
build/bench/bench --backends fast --only sample --preset mini --csv >> "$tmp/msdiff.csv"
build/bench/bench --backends ref --only train --preset mini --csv --ref-batch 8 >> "$tmp/msdiff.csv"
grep '^#' "$tmp/msdiff.csv" | head -n 2
fast_train=$(grep '^train,fast' "$tmp/msdiff.csv" | grep -F '"train step mini (' | awk -F, '{print $NF}')
ref_train=$(grep '^train,ref' "$tmp/msdiff.csv" | grep -F '"train step mini (' | awk -F, '{print $NF}')
fast_sample=$(grep '^sample,fast' "$tmp/msdiff.csv" | grep -F '"sampling forward mini stage 0' | awk -F, '{print $NF}')

n=0
for py in "$@"; do
    n=$((n + 1))
    "$py" bench/torch_compare.py bench --config mini --batch 64 --threads "$THREADS" --csv > "$tmp/torch$n.csv"
    grep '^# torch' "$tmp/torch$n.csv" | sed "s|^# |torch $n: |"
done

echo
printf '%-44s %12s %12s\n' "mini, batch 64, $THREADS threads" "train img/s" "sample img/s"
printf '%-44s %12.1f %12.1f\n' "msdiff fast" "$fast_train" "$fast_sample"
printf '%-44s %12.2f %12s\n' "msdiff ref (batch 8)" "$ref_train" "-"
n=0
for py in "$@"; do
    n=$((n + 1))
    v=$(grep '^# torch' "$tmp/torch$n.csv" | sed 's/^# torch \([^,]*\),.*/\1/')
    t=$(grep '^train,' "$tmp/torch$n.csv" | awk -F, '{print $NF}')
    s=$(grep '^sample,' "$tmp/torch$n.csv" | head -n 1 | awk -F, '{print $NF}')
    printf '%-44s %12.1f %12.1f\n' "PyTorch $v" "$t" "$s"
    printf '%-44s %11.2fx %11.2fx\n' "  fast / PyTorch $v" "$(ratio "$fast_train" "$t")" "$(ratio "$fast_sample" "$s")"
done
printf '%-44s %11.1fx\n' "fast / ref (training step)" "$(ratio "$fast_train" "$ref_train")"
echo
echo "msdiff denoise (fast) against PyTorch on every stage of mini-ms (bound 1e-4):"
"$1" bench/torch_compare.py compare --backend fast | grep '^stage'
