"""Package-level checks: build information, kernel selection, the info command."""

import ctypes
import ctypes.util
import os
import platform
import subprocess
import sys

import pytest

import turboquant
from turboquant import _core


def cpu_flags():
    """CPU feature flags from /proc/cpuinfo (Linux), independent of the C detection code."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def run_info(env_overrides):
    env = dict(os.environ)
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "turboquant", "info"], capture_output=True, text=True, env=env, timeout=60
    )


def test_info_reports_facts(capsys):
    facts = turboquant.info()
    printed = capsys.readouterr().out
    assert facts["version"] == turboquant.__version__
    assert turboquant.__version__ in printed
    assert facts["kernels"] in facts["supported_kernels"]
    assert "scalar" in facts["supported_kernels"]
    assert facts["openmp_threads"] >= 1
    assert facts["libyaml_version"] in printed


def test_libyaml_version_matches_shared_library():
    name = ctypes.util.find_library("yaml")
    if name is None:
        pytest.skip("libyaml shared library not found by ctypes")
    lib = ctypes.CDLL(name)
    lib.yaml_get_version_string.restype = ctypes.c_char_p
    assert _core.build_info()["libyaml_version"] == lib.yaml_get_version_string().decode()


def test_openmp_threads_follow_environment():
    result = subprocess.run(
        [sys.executable, "-c", "from turboquant import _core; print(_core.build_info()['openmp_threads'])"],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="3"), timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_kernel_detection_matches_cpuinfo():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    supported = set(_core.build_info()["supported_kernels"])
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        assert ("avx2" in supported) == ({"avx2", "fma"} <= flags)
        assert ("avx512" in supported) == ({"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags)
        assert "neon" not in supported
    elif machine in ("aarch64", "arm64"):
        assert "neon" in supported


def test_forced_kernels_are_reported():
    for name in _core.build_info()["supported_kernels"]:
        result = run_info({"TURBOQUANT_KERNELS": name})
        assert result.returncode == 0, result.stderr
        assert f"kernels:        {name} " in result.stdout


def test_unknown_kernel_name_is_rejected():
    result = run_info({"TURBOQUANT_KERNELS": "sse9"})
    assert result.returncode != 0
    assert "TURBOQUANT_KERNELS" in result.stderr
    assert "sse9" in result.stderr
    assert "Traceback" not in result.stderr


def test_unsupported_kernel_is_rejected():
    supported = set(_core.build_info()["supported_kernels"])
    missing = [name for name in ("avx2", "avx512", "neon") if name not in supported]
    if not missing:
        pytest.skip("this CPU supports every kernel variant")
    result = run_info({"TURBOQUANT_KERNELS": missing[0]})
    assert result.returncode != 0
    assert "not supported" in result.stderr
