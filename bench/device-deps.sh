#!/bin/sh
# bench/device-deps.sh: fetch, on this machine, the Debian packages msdiff builds against, into
# .device/debs (ignored by git), for a GPU machine that cannot reach a package archive. Run it once
# before a device run that carries .device; bench/device-check.sh unpacks them there when the
# machine lacks the headers. Needs apt-get (Debian 12 here) and network access to its archive.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .device/debs
cd .device/debs
apt-get download libcjson-dev libcjson1 check libsubunit-dev libsubunit0 libpng-dev libpng16-16 zlib1g-dev
ls -l
