"""Execute every proofs notebook (jupytext percent-format ``.py``) top to bottom.

Each runs in a fresh kernel with ``LRMATH_SCALE=ci``; a failing assertion or error
in any cell fails the test and shows the cell.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "proofs_notebooks"
NOTEBOOKS = sorted(p for p in NB_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("LRMATH_SCALE", os.environ.get("LRMATH_SCALE", "ci"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("LRMATH_PROGRESS", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    # keep the executed notebook for inspection when asked
    out = os.environ.get("LRMATH_NOTEBOOK_OUT")
    if out:
        import nbformat

        Path(out).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(Path(out) / f"{path.stem}.ipynb"))


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NB_DIR}"
