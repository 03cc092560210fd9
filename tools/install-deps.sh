#!/bin/sh
# Installs what the build, the tests and the default runs need and this machine lacks, with
# apt-get (Debian, Ubuntu), when run as root: pkg-config and OpenBLAS (dn_matmul's BLAS backend,
# found through pkg-config) and the fortunes package (the English text `deltanet train` reads by
# default). Anything else (no apt-get, not root) gets a note and the build goes on: OpenBLAS is
# optional (the built-in kernel runs without it) and the corpus is only read by `deltanet train`.
need=""
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openblas; }; then
    need="$need libopenblas-dev"
fi
# the full package (about 2 MB of text), not only fortunes-min's three files (98 KB), which share
# the directory: science is one of the full package's files
[ -f /usr/share/games/fortunes/science ] || need="$need fortunes"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$need"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq $need; } >/dev/null 2>&1 ||
        echo "note: apt-get could not install$need (the build goes on without)"
else
    echo "note: not installed:$need (install them for OpenBLAS and the default text corpus)"
fi
exit 0
