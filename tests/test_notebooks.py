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


def test_scale_notebook_runs_headless_offline(tmp_path, monkeypatch):
    """notebooks/scale.ipynb offline: a random GPT-2 through load_pretrained, the memory plan
    (GPT-J 6B included, from shapes), and a few meta-training steps on a 2 x 4 mesh."""
    monkeypatch.setenv("MEND_JAX_SCALE", "offline")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(os.path.join(REPO, "notebooks", "scale.ipynb"), as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| gpt-j-6b | bfloat16, full | cpu x8 (1 x 8)" in outputs, outputs[-2000:]
    assert "mesh: {'data': 2, 'fsdp': 4}" in outputs and "trained 4 steps on 8 devices" in outputs, outputs[-2000:]


def test_real_model_notebook_edits_smollm2(tmp_path, monkeypatch):
    """notebooks/real_model.ipynb: SmolLM2-135M from its wheel, an FT edit of a real fact with the
    other facts unchanged, and an export whose transformers completion is the edited Flax model's."""
    monkeypatch.setenv("MEND_JAX_REAL_RUN", str(tmp_path / "no_run"))  # the FT part only: no training in CI
    nb = nbformat.read(os.path.join(REPO, "notebooks", "real_model.ipynb"), as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "reliability 1.000 (before 0.000)" in outputs and "transformers: ' Rome" in outputs, outputs[-2000:]
