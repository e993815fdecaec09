#!/usr/bin/env bash
# Run the test suite on a build of the extension with AddressSanitizer and
# UndefinedBehaviorSanitizer, then replay the fuzz harnesses with LeakSanitizer.
#
# Usage: bash scripts/sanitize.sh [PYTEST_ARGS...]
#
# The checkout is copied (tracked and untracked, not ignored files) to
# SANITIZE_DIR (default: a new temporary directory) and built there with
# TURBOQUANT_SANITIZE=1, so the normal build in the checkout stays as it is.
#
# Environment:
#   SANITIZE_DIR        build and test directory; emptied first when given
#   SANITIZE_SKIP_SLOW  1 deselects the tests listed in tests/sanitize_skip.txt
#                       to fit a CI time budget. They are the slowest reference
#                       comparisons, and that file gives the reason for each.
#   SANITIZE_KEEP       1 keeps a temporary SANITIZE_DIR after the run
#
# Step 1 runs pytest with the gcc ASan runtime preloaded into python and
# detect_leaks=0, because CPython and its extensions keep memory until exit that
# LeakSanitizer reports as leaks. Step 2 runs tests/test_fuzz_harnesses.py, whose
# C-only harness binaries run with detect_leaks=1, so leaks in the C core are
# still caught. Reports from third-party code are suppressed by
# scripts/sanitize_suppressions/*.supp, which name only third-party frames.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

if [ -n "${SANITIZE_DIR:-}" ]; then
    dir="$SANITIZE_DIR"
    rm -rf "$dir"
    mkdir -p "$dir"
else
    dir="$(mktemp -d /tmp/turboquant-sanitize.XXXXXX)"
    if [ "${SANITIZE_KEEP:-0}" != 1 ]; then
        trap 'rm -rf "$dir"' EXIT
    fi
fi

asan_runtime="$(gcc -print-file-name=libasan.so)"
if [ ! -f "$asan_runtime" ]; then
    echo "sanitize.sh: gcc's AddressSanitizer runtime (libasan.so) not found: install gcc's libasan (Debian: libasan8)." >&2
    exit 1
fi
# ASan resolves __cxa_throw when it starts, so libstdc++ must be loaded with it.
# Otherwise the first C++ exception (llama.cpp throws some while loading a
# vocabulary) fails ASan's CHECK "real___cxa_throw != 0" and aborts.
stdcxx_runtime="$(gcc -print-file-name=libstdc++.so.6)"
# The interpreter itself, because a pyenv shim is a bash script that the
# preloaded runtime would instrument too.
python_bin="$(python -c 'import sys; print(sys.executable)')"

echo "sanitize.sh: copying the checkout to $dir"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
    [ -e "$file" ] && printf '%s\0' "$file"
done | tar --null -T - -cf - | tar -xf - -C "$dir"

cd "$dir"
start=$SECONDS
TURBOQUANT_SANITIZE=1 python setup.py -q build_ext --inplace >build.log 2>&1 || {
    cat build.log >&2
    exit 1
}
echo "sanitize.sh: built the sanitized extension in $((SECONDS - start)) s"

skip_args=()
if [ "${SANITIZE_SKIP_SLOW:-0}" = 1 ]; then
    while IFS= read -r line; do
        case "$line" in '' | '#'*) continue ;; esac
        skip_args+=(--deselect "$line")
    done <"$root/tests/sanitize_skip.txt"
fi

export OMP_NUM_THREADS=2
supp="$dir/scripts/sanitize_suppressions"
# Reports go to files because pytest captures the stderr of an aborting test.
reports="$dir/sanitizer-reports"
mkdir -p "$reports"
# Step 1: the suite under ASan and UBSan. LD_PRELOAD puts the ASan runtime first,
# as it requires, because python itself is not instrumented.
start=$SECONDS
status=0
LD_PRELOAD="$asan_runtime $stdcxx_runtime" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$reports/asan:suppressions=$supp/asan.supp" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan:suppressions=$supp/ubsan.supp" \
    "$python_bin" -m pytest -q -p no:cacheprovider tests --ignore=tests/test_fuzz_harnesses.py "${skip_args[@]}" "$@" ||
    status=$?
echo "sanitize.sh: pytest under ASan and UBSan finished with status $status in $((SECONDS - start)) s"
for report in "$reports"/*; do
    [ -e "$report" ] || continue
    echo "sanitize.sh: sanitizer report $report:" >&2
    head -n 80 "$report" >&2
    status=1
done

# Step 2: the C harnesses with leak detection on (they set detect_leaks=1 themselves).
start=$SECONDS
leak_status=0
python -m pytest -q -p no:cacheprovider tests/test_fuzz_harnesses.py || leak_status=$?
echo "sanitize.sh: harness replay with LeakSanitizer finished with status $leak_status in $((SECONDS - start)) s"

[ "$status" -eq 0 ] && [ "$leak_status" -eq 0 ]
