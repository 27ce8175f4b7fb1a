"""notebooks/quickstart.ipynb runs top to bottom, headless, on the small world's schedule
(MEND_JAX_QUICKSTART=small): a failing cell, or one of its assertions (the edits take; the
exported model's completion in transformers is the edited Flax model's), fails the test."""
import os

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("MEND_JAX_QUICKSTART", "small")
    path = os.path.join(REPO, "notebooks", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    # The notebook finds the repository from its working directory; its runs go to a copy's runs/.
    work = tmp_path / "repo"
    work.mkdir()
    os.symlink(os.path.join(REPO, "configs"), work / "configs")
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "edit success (edit/acc_val)" in outputs and "transformers:" in outputs, outputs[-2000:]
    assert (work / "runs" / "quickstart_world_small" / "editor" / "editor.safetensors").is_file()
