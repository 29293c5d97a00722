# bench/device-env.sh: what the device scripts (device-check.sh, device-experiment.sh) share, sourced
# from the repository root once they have set OUT. It creates $OUT, puts CUDA's tools on PATH, sets
# NVCC, and defines step (a progress line with the seconds since the start) and device_deps.
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
T0=$(date +%s)
step() { echo "== [$(($(date +%s) - T0)) s] $*"; }
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)

# device_deps: when the machine lacks the headers msdiff builds against, unpack the Debian packages of
# .device/debs (bench/device-deps.sh fetches them on the development machine) into /tmp/msd-deps and
# set make_vars to the make arguments that point the build there; otherwise make_vars is empty.
# Returns 1, with the reason, when the headers are missing and no packages were carried.
device_deps() {
    make_vars=()
    if ! printf '#include <cjson/cJSON.h>\n#include <check.h>\n#include <png.h>\n#include <zlib.h>\n' |
            cc -E -x c - > /dev/null 2>&1; then
        if ! ls .device/debs/*.deb > /dev/null 2>&1; then
            echo "device-env: this machine lacks cJSON/Check/libpng/zlib headers and no .device/debs was carried"
            echo "            (run bench/device-deps.sh on the development machine and carry .device)"
            return 1
        fi
        local D=/tmp/msd-deps
        rm -rf "$D" && mkdir -p "$D"
        for f in .device/debs/*.deb; do dpkg -x "$f" "$D"; done
        local LIB=$D/usr/lib/x86_64-linux-gnu
        rm -f "$LIB/libz.so" # points at the Debian system's libz; the static libz.a beside it is used
        make_vars=(CFLAGS_EXTRA="-I$D/usr/include" LDFLAGS_EXTRA="-L$LIB -Wl,-rpath,$LIB")
        echo "unpacked $(ls .device/debs | wc -l) packages into $D"
    fi
}
