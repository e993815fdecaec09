"""Build and run-time information: version, kernel variants, OpenMP threads, libyaml."""

import platform

from . import _core


def info(file=None):
    """Print the version, the selected SIMD kernels, OpenMP threads and libyaml version.

    Returns the same facts as a dict, so notebooks and bug reports can record them.
    """
    from . import __version__

    build = _core.build_info()
    facts = {
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "kernels": build["kernels"],
        "best_kernels": build["best_kernels"],
        "supported_kernels": build["supported_kernels"],
        "openmp_threads": build["openmp_threads"],
        "openmp_version": build["openmp_version"],
        "libyaml_version": build["libyaml_version"],
    }
    lines = [
        f"turboquant {facts['version']} (Python {facts['python']}, {facts['machine']})",
        f"kernels:        {facts['kernels']} (supported: {', '.join(facts['supported_kernels'])};"
        " force one with TURBOQUANT_KERNELS)",
        f"OpenMP threads: {facts['openmp_threads']} (OpenMP {facts['openmp_version']}; set OMP_NUM_THREADS to change)",
        f"libyaml:        {facts['libyaml_version']}",
    ]
    print("\n".join(lines), file=file)
    return facts
