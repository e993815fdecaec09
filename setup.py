"""Build the C core `turboquant._core` from csrc/ and kernels/.

SIMD kernels live in files named `*_avx2.c`, `*_avx512.c`, `*_avx512vnni.c` and
`*_neon.c`. Each is
compiled with its own target flags, and the core picks a variant at run time from
the CPU features, so one build runs on any x86-64 or arm64 CPU.

Environment variables read at build time:
    TURBOQUANT_SANITIZE=1   build with AddressSanitizer and UndefinedBehaviorSanitizer
                            (scripts/sanitize.sh runs the test suite on such a build)
    TURBOQUANT_DEBUG=1      build with -O0 -g
"""

import glob
import os
import platform
import sys

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MACHINE = platform.machine().lower()
IS_X86_64 = MACHINE in ("x86_64", "amd64")
IS_ARM64 = MACHINE in ("aarch64", "arm64")

# Target flags per kernel file suffix. AVX-512 kernels may use F, BW, DQ and VL.
KERNEL_FLAGS = {
    "_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c"],
    "_avx512vnni.c": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma", "-mf16c"],
    "_neon.c": [],  # NEON is part of the arm64 baseline.
}


def kernel_suffix(path):
    for suffix in KERNEL_FLAGS:
        if path.endswith(suffix):
            return suffix
    return None


def collect_sources():
    """Return the C sources for this machine's architecture and the macros naming its SIMD variants."""
    sources = sorted(glob.glob("csrc/*.c") + glob.glob("csrc/binding/*.c") + glob.glob("kernels/*.c"))
    host_suffixes = set()
    macros = []
    if IS_X86_64:
        host_suffixes = {"_avx2.c", "_avx512.c", "_avx512vnni.c"}
        macros += [("TQ_HAVE_AVX2_KERNELS", "1"), ("TQ_HAVE_AVX512_KERNELS", "1")]
    elif IS_ARM64:
        host_suffixes = {"_neon.c"}
        macros += [("TQ_HAVE_NEON_KERNELS", "1")]
    host_sources = [s for s in sources if kernel_suffix(s) is None or kernel_suffix(s) in host_suffixes]
    return host_sources, macros


class BuildExtWithKernelFlags(build_ext):
    """build_ext that adds per-file target flags to the SIMD kernel files."""

    def build_extensions(self):
        compiler = self.compiler
        original_compile = compiler._compile

        def compile_with_target_flags(obj, src, ext, cc_args, extra_postargs, pp_opts):
            suffix = kernel_suffix(src)
            if suffix is not None:
                extra_postargs = list(extra_postargs) + KERNEL_FLAGS[suffix]
            original_compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        compiler._compile = compile_with_target_flags
        super().build_extensions()


def compile_and_link_flags():
    compile_args = ["-std=c11", "-Wall", "-Wextra", "-fopenmp", "-fvisibility=hidden"]
    link_args = ["-fopenmp"]
    if os.environ.get("TURBOQUANT_DEBUG") == "1":
        compile_args += ["-O0", "-g"]
    else:
        compile_args += ["-O3"]
    if os.environ.get("TURBOQUANT_SANITIZE") == "1":
        # Undefined behaviour aborts, so a test run cannot pass over it.
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
        compile_args += sanitize
        link_args += sanitize
    return compile_args, link_args


if sys.platform == "win32":
    raise SystemExit("turboquant builds with GCC or Clang on Linux and macOS; Windows is not supported yet.")

sources, macros = collect_sources()
compile_args, link_args = compile_and_link_flags()

core = Extension(
    "turboquant._core",
    sources=sources,
    include_dirs=["csrc", "kernels", numpy.get_include()],
    define_macros=macros + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("_GNU_SOURCE", "1")],
    libraries=["yaml", "m"],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(ext_modules=[core], cmdclass={"build_ext": BuildExtWithKernelFlags})
