"""Check the arm64 NEON kernels of QJL and PolarQuant against the scalar reference under qemu.

The main build compiles only the kernels of the host architecture, so on x86-64 the NEON
file would otherwise go untested until arm64 CI. This test cross-compiles
tests/c/qjl_polar_kernels_check.c with aarch64-linux-gnu-gcc and runs it with qemu-aarch64;
it is skipped when either tool is missing (on arm64 the Python tests run NEON natively).
"""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = [
    "tests/c/qjl_polar_kernels_check.c",
    "kernels/qjl_polar_scalar.c",
    "kernels/qjl_polar_neon.c",
    "csrc/cpu.c",
    "csrc/tq_common.c",
]


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
    reason="needs aarch64-linux-gnu-gcc and qemu-aarch64",
)
def test_neon_kernels_match_scalar(tmp_path):
    binary = tmp_path / "qjl_polar_kernels_check"
    compile_command = [
        "aarch64-linux-gnu-gcc",
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O2",
        "-static",
        "-D_GNU_SOURCE=1",
        "-DTQ_HAVE_NEON_KERNELS=1",
        "-Icsrc",
        "-Ikernels",
        *SOURCES,
        "-lm",
        "-o",
        str(binary),
    ]
    built = subprocess.run(compile_command, cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run(["qemu-aarch64", str(binary), "neon"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"
