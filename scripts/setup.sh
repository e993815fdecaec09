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

python -m pip install -q -e ".[$extras]"
