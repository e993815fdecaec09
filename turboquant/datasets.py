"""Public-domain English text for perplexity measurements, fetched from PyPI on first use.

The texts come from the test data of the ``brotli`` source distribution on PyPI, which
includes the Canterbury corpus. ``alice29.txt`` (Lewis Carroll, "Alice's Adventures in Wonderland",
152,089 bytes, 39,706 Gemma 3 tokens) and ``lcet10.txt`` (proceedings of a 1992 Library of
Congress workshop, 426,754 bytes, 90,270 Gemma 3 tokens) are used. pip downloads the sdist
once into the cache directory; nothing is built or installed.
"""

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

BROTLI_SDIST = "brotli==1.2.1"
BROTLI_ARCHIVE = "brotli-1.2.1.tar.gz"

# SHA-256 of each text as shipped, so a changed or damaged download is detected.
TEXTS = {
    "alice29": ("brotli-1.2.1/tests/testdata/alice29.txt",
                "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"),
    "lcet10": ("brotli-1.2.1/tests/testdata/lcet10.txt",
               "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f"),
}


def cache_dir():
    """Directory for downloaded texts: $TURBOQUANT_CACHE, else ~/.cache/turboquant/corpus."""
    root = os.environ.get("TURBOQUANT_CACHE") or os.path.join(Path.home(), ".cache", "turboquant")
    return Path(root) / "corpus"


def _download_archive(directory):
    archive = directory / BROTLI_ARCHIVE
    if archive.exists():
        return archive
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", str(directory), BROTLI_SDIST]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not archive.exists():
        raise OSError(f"downloading the {BROTLI_SDIST} sdist from PyPI failed (command: {' '.join(command)}):\n"
                      f"{result.stderr.strip()}")
    return archive


def english_text_path(name="alice29"):
    """Return the path of a plain-text English corpus file, downloading it on first use.

    name: "alice29" (Alice's Adventures in Wonderland) or "lcet10" (workshop proceedings).
    """
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; expected one of {sorted(TEXTS)}")
    member, expected_sha256 = TEXTS[name]
    directory = cache_dir()
    target = directory / f"{name}.txt"
    if target.exists():
        return target

    directory.mkdir(parents=True, exist_ok=True)
    archive = _download_archive(directory)
    with tarfile.open(archive, "r:gz") as tar:
        data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise OSError(f"{member} in {archive} does not match its known SHA-256; delete {directory} and retry")

    # Write to a temporary name and rename, so an interrupted run leaves no partial file.
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def english_text(name="alice29"):
    """Return the text of english_text_path(name), with Windows line endings normalised."""
    return english_text_path(name).read_text(encoding="latin-1").replace("\r\n", "\n")
