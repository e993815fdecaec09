#!/usr/bin/env bash
# Install system libraries and the package with the given extras (comma-separated).
# Usage: bash scripts/setup.sh [EXTRAS]     for example: bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-model}"

# libyaml headers are needed to build the C core; apt-get is Debian's and Ubuntu's.
if [ ! -f /usr/include/yaml.h ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq libyaml-dev
    else
        echo "libyaml headers (yaml.h) are missing: install libyaml-dev (Debian) or libyaml (Homebrew) and rerun." >&2
        exit 1
    fi
fi

# torch is only a test reference; the CPU build on this disk keeps the install small.
if [[ ",$extras," == *",test,"* ]] && ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0"
fi

# llama-cpp-python (the bench extra) compiles ggml with -march=native. Some VMs list AMX among
# the CPU flags without enabling its tile registers, and ggml's AMX kernels then die with
# SIGILL. So one tile instruction is tried first, and ggml is built without AMX if it fails.
if [[ ",$extras," == *",bench,"* ]] && [ -z "${CMAKE_ARGS:-}" ] && [ "$(uname -m)" = x86_64 ] &&
    grep -q amx_tile /proc/cpuinfo 2>/dev/null; then
    probe_dir="$(mktemp -d)"
    cat > "$probe_dir/amx_probe.c" <<'PROBE'
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Exit 0 when this process may use AMX tiles: ask the kernel for the tile state
 * (ARCH_REQ_XCOMP_PERM for XTILEDATA), load a one-tile configuration and zero the tile. */
int main(void)
{
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
        return 1;
    }
    unsigned char config[64];
    memset(config, 0, sizeof(config));
    config[0] = 1;   /* palette 1 */
    config[16] = 64; /* tile 0: 64 bytes per row */
    config[48] = 16; /* tile 0: 16 rows */
    _tile_loadconfig(config);
    _tile_zero(0);
    _tile_release();
    return 0;
}
PROBE
    if cc -O1 -mamx-tile "$probe_dir/amx_probe.c" -o "$probe_dir/amx_probe" 2>/dev/null &&
        ! ("$probe_dir/amx_probe" || exit 1) 2>/dev/null; then
        echo "AMX tile instructions fail on this machine: building llama-cpp-python without AMX." >&2
        no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        export CMAKE_ARGS="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
    fi
    rm -rf "$probe_dir"
fi

python -m pip install -q -e ".[$extras]"
