"""Every notebook in colab/ runs top to bottom at its smoke settings (GENDISTILL_NOTEBOOK_SMOKE=1)."""
import glob
import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
CELL_BUDGET_S = 300     # any one cell slower than this at smoke size is a failure


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_settings(path, tmp_path, monkeypatch, user_env):
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):   # the kernel sees one CPU device, as in a user's Colab session
    if name in user_env:
      monkeypatch.setenv(name, user_env[name])
    else:
      monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("GENDISTILL_NOTEBOOK_SMOKE", "1")
  notebook = nbformat.read(path, as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
      f"{os.path.basename(path)} is committed with outputs: clear them")
  client = nbclient.NotebookClient(notebook, timeout=CELL_BUDGET_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  start = time.time()
  client.execute()
  print(f"{os.path.basename(path)}: {time.time() - start:.0f} s")
