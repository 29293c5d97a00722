# bench/device-env.sh: sourced by the device scripts (device-check.sh, device-experiment.sh) on a GPU
# machine. When the machine lacks the headers msdiff builds against, it unpacks the Debian packages
# of .device/debs (bench/device-deps.sh fetches them on the development machine) into /tmp/msd-deps
# and sets make_vars to the make arguments that point the build there; otherwise make_vars is empty.
# Returns 1, with the reason, when the headers are missing and no packages were carried.
make_vars=()
if ! printf '#include <cjson/cJSON.h>\n#include <check.h>\n#include <png.h>\n#include <zlib.h>\n' |
        cc -E -x c - > /dev/null 2>&1; then
    if ! ls .device/debs/*.deb > /dev/null 2>&1; then
        echo "device-env: this machine lacks cJSON/Check/libpng/zlib headers and no .device/debs was carried"
        echo "            (run bench/device-deps.sh on the development machine and carry .device)"
        return 1
    fi
    D=/tmp/msd-deps
    rm -rf "$D" && mkdir -p "$D"
    for f in .device/debs/*.deb; do dpkg -x "$f" "$D"; done
    LIB=$D/usr/lib/x86_64-linux-gnu
    rm -f "$LIB/libz.so" # points at the Debian system's libz; the static libz.a beside it is used
    make_vars=(CFLAGS_EXTRA="-I$D/usr/include" LDFLAGS_EXTRA="-L$LIB -Wl,-rpath,$LIB")
    echo "unpacked $(ls .device/debs | wc -l) packages into $D"
fi
