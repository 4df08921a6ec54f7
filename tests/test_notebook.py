"""The quickstart notebook runs from top to bottom (in its quick mode)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_quickstart_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSIFT_QUICKSTART_QUICK", "1")
    monkeypatch.setenv("DEEPSIFT_QUICKSTART_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("DEEPSIFT_CACHE_DIR", str(tmp_path / "cache"))
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute(env=dict(os.environ))
    for name in ("timm/roc_test.png", "timm/metrics_test.json", "durall/best.pt", "spectra.png"):
        assert (tmp_path / "out" / name).is_file(), name
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
