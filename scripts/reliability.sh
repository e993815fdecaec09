#!/usr/bin/env bash
# The short reliability runs of docs/reliability.md, for CI: one minute of every libFuzzer and
# atheris harness, then the test suite under AddressSanitizer and UndefinedBehaviorSanitizer.
# Usage: bash scripts/reliability.sh [SECONDS_PER_HARNESS]   (after scripts/setup.sh test)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

# libFuzzer and the sanitizer runtimes come with clang (Debian 12: clang 14), and the C core
# includes omp.h, which clang finds only with LLVM's OpenMP headers (libomp-14-dev).
if ! command -v clang >/dev/null 2>&1 || ! echo '#include <omp.h>' | clang -fopenmp -E -x c - >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq clang libclang-rt-14-dev libomp-14-dev
    else
        echo "reliability.sh: clang is missing: install clang with its compiler-rt runtime and rerun." >&2
        exit 1
    fi
fi
python -c "import atheris" >/dev/null 2>&1 || python -m pip install -q "atheris>=2.3"

bash scripts/fuzz.sh "$seconds"
bash scripts/fuzz_python.sh "$seconds"
SANITIZE_SKIP_SLOW=1 bash scripts/sanitize.sh
