#!/usr/bin/env bash
# Run each atheris harness in tests/fuzz/atheris/ for SECONDS seconds (default 60), one after
# the other, and print the number of executions of each.
#
#   scripts/fuzz_python.sh [SECONDS] [HARNESS...]
#
# HARNESS is a harness name such as fuzz_chat (default: every tests/fuzz/atheris/fuzz_*.py).
# The corpus grows in build/fuzz-corpus/HARNESS, starting from tests/fuzz/atheris/seeds/HARNESS
# where that exists, with the libFuzzer dictionary tests/fuzz/atheris/HARNESS.dict where that
# exists. Inputs that fail are written to build/fuzz-artifacts/. The script exits
# with status 1 when a harness finds a failure. Needs atheris (pip install atheris).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "fuzz_python.sh: SECONDS must be a positive integer, got '$seconds'" >&2
    exit 2
fi

harnesses=("$@")
if [ ${#harnesses[@]} -eq 0 ]; then
    for path in tests/fuzz/atheris/fuzz_*.py; do
        name="$(basename "$path" .py)"
        [ "$name" = fuzz_values ] || harnesses+=("$name")
    done
fi

mkdir -p build/fuzz-artifacts
failed=0
for name in "${harnesses[@]}"; do
    script="tests/fuzz/atheris/$name.py"
    if [ ! -f "$script" ]; then
        echo "fuzz_python.sh: harness $script not found" >&2
        exit 2
    fi
    corpus="build/fuzz-corpus/$name"
    mkdir -p "$corpus"
    seeds=()
    [ -d "tests/fuzz/atheris/seeds/$name" ] && seeds=("tests/fuzz/atheris/seeds/$name")
    options=()
    [ -f "tests/fuzz/atheris/$name.dict" ] && options=("-dict=tests/fuzz/atheris/$name.dict")
    log="build/fuzz-artifacts/$name.log"
    echo "== $name: $seconds s, corpus $corpus, log $log"
    status=0
    # -timeout: one input that runs longer than 60 s counts as a hang. Every input takes well
    # under a second, but a 10 s limit fired falsely while a C build starved a niced harness
    # of CPU. -rss_limit_mb: the server request harness loads the model (about 300 MB mapped).
    python "$script" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 \
        -artifact_prefix="build/fuzz-artifacts/$name-" "${options[@]}" "$corpus" "${seeds[@]}" >"$log" 2>&1 \
        || status=$?
    runs="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 || true)"
    if [ "$status" -ne 0 ]; then
        echo "   FAILED (exit status $status); see $log and build/fuzz-artifacts/$name-*"
        grep -A 20 'Uncaught Python exception' "$log" | head -25 || true
        failed=1
    else
        echo "   ${runs:-no run count in the log}"
    fi
done
exit "$failed"
