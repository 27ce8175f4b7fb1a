"""Nothing a user owns is lost and no number is silently wrong: output directories, non-finite
values, argument checks, editor identity and the errors that used to be tracebacks (issue 40)."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mend_jax import Editor, config_checks, config_lib, experiments
from mend_jax import edit as edit_cli
from mend_jax.config_checks import ConfigError
from mend_jax.editing import editor_files, outputs
from mend_jax.editing.editor import EditScaleWarning
from mend_jax.editing.editor_files import EditorFileError, NonFiniteEditor
from mend_jax.editing.requests import EditInputError
from mend_jax.editors.idmlp import clamp_min_zero
from mend_jax.trainer import Trainer, TrainingDiverged
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS, TARGETS = ["w1 w2 w3 w4", "w5 w6 w7"], ["w9 w10", "w11"]


@pytest.fixture(scope="module")
def editor(gen_run):
    return Editor.from_run(gen_run, max_new_tokens=3)


def tree_listing(root):
    """{relative path: bytes} of every file under `root`."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


def users_directory(path):
    os.makedirs(os.path.join(path, "sub"))
    for name, text in (("thesis.tex", "\\section{Results}"), ("sub/data.csv", "a,b\n1,2\n")):
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return tree_listing(path)


def edit_cli_error(capsys, *args):
    """(exit status, stderr) of the edit command, which must fail with one `error:` line."""
    with pytest.raises(SystemExit) as e:
        edit_cli.main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return e.value.code, err[0]


def no_partials(parent):
    return not [n for n in os.listdir(parent) if ".partial" in n]


# ----- 1. --out never deletes what the project did not write -------------------------------------

def test_out_refuses_a_users_directory_and_the_run_itself(gen_run, editor, tmp_path, capsys):
    mine = str(tmp_path / "mine")
    before = users_directory(mine)
    code, err = edit_cli_error(capsys, "--run", gen_run, "--prompt", "w1 w2", "--target", "w3", "--out", mine)
    assert code == 2 and "was not written by mend_jax" in err and "thesis.tex" in err
    assert tree_listing(mine) == before
    run_before = tree_listing(gen_run)
    code, err = edit_cli_error(capsys, "--run", gen_run, "--prompt", "w1 w2", "--target", "w3", "--out", gen_run)
    assert code == 2 and tree_listing(gen_run) == run_before
    # Editor.save and save_pretrained follow the same rule.
    with pytest.raises(outputs.OutputError, match="was not written by mend_jax"):
        editor.save(mine)
    with pytest.raises(outputs.OutputError, match="was not written by mend_jax"):
        editor.save_pretrained(mine)
    assert tree_listing(mine) == before
    # An export is not an editor, and an editor is not an export: neither replaces the other.
    editor.save(str(tmp_path / "ed"))
    with pytest.raises(outputs.OutputError, match="holds a saved editor"):
        editor.save_pretrained(str(tmp_path / "ed"))


def test_an_earlier_export_is_replaced_but_not_once_a_user_added_to_it(gen_run, tmp_path, capsys):
    out = str(tmp_path / "edited")
    args = ["--run", gen_run, "--prompt", "w1 w2", "--target", "w3", "--max-new-tokens", "2", "--out", out]
    assert edit_cli.main(args) == 0
    first = tree_listing(out)
    assert "metrics.json" in first and "model.safetensors" in first and outputs.MARKER in first
    assert edit_cli.main(args[:2] + ["--prompt", "w4 w5", "--target", "w6"] + args[6:]) == 0
    second = tree_listing(out)
    assert json.loads(second["metrics.json"])["before"][0]["prompt"] == "w4 w5"
    assert no_partials(tmp_path)
    capsys.readouterr()
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("mine")
    code, err = edit_cli_error(capsys, *args)
    assert code == 2 and "has changed since" in err and "added: notes.txt" in err
    assert tree_listing(out)["notes.txt"] == b"mine"
    os.remove(os.path.join(out, "notes.txt"))
    with open(os.path.join(out, "config.json"), "a") as f:  # a file of the export, changed by hand
        f.write(" ")
    code, err = edit_cli_error(capsys, *args)
    assert code == 2 and "changed: config.json" in err


# ----- 5. replacing an export is atomic -----------------------------------------------------------

KILLED_WRITE = """
import os, signal, sys
from mend_jax.editing import outputs
out, content, stop_at, exchange = sys.argv[1:5]
if exchange == "no":
    outputs._exchange = lambda a, b: False
outputs._stage = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == stop_at else None
def fill(tmp):
    os.makedirs(os.path.join(tmp, "sub"))
    for name in ("metrics.json", "sub/model.bin"):
        with open(os.path.join(tmp, name), "w") as f:
            f.write(content * 1000)
outputs.write_dir(out, outputs.MODEL, fill)
"""


def write_export(out, content, stop_at="never", exchange="yes"):
    return subprocess.run([sys.executable, "-c", KILLED_WRITE, out, content, stop_at, exchange], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def export_content(out):
    """The one string an intact export's files hold, or None if it is not intact."""
    if outputs.export_kind(out) != outputs.MODEL:
        return None
    contents = {v for k, v in tree_listing(out).items() if k != outputs.MARKER}
    return contents.pop().decode()[:3] if len(contents) == 1 else None


@pytest.mark.parametrize("exchange, stop_at, expected", [
    ("yes", "written", "old"), ("yes", "swapped", "new"),
    ("no", "written", "old"), ("no", "moved aside", "old"), ("no", "swapped", "new"),
])
def test_a_killed_export_leaves_the_earlier_or_the_new_one_intact(tmp_path, exchange, stop_at, expected):
    out = str(tmp_path / "edited")
    assert write_export(out, "old").returncode == 0 and export_content(out) == "old"
    killed = write_export(out, "new", stop_at, exchange)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if exchange == "yes":  # renameat2 exchanges the two directories: out is whole at every instant
        assert export_content(out) == expected
    outputs.check_output_dir(out, outputs.MODEL)  # what the next export does first
    assert export_content(out) == expected
    assert write_export(out, "3rd").returncode == 0 and export_content(out) == "3rd"


# ----- 2. non-finite numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("lr", float("nan")), ("edit_lr", float("inf")), ("lr_lr", float("-inf")),
                                        ("c_loc", float("nan")), ("grad_clip", float("nan")),
                                        ("data.loc_pct", float("nan"))])
def test_nan_and_inf_config_values_are_refused_naming_the_key(gen_config, key, value):
    c = gen_config.copy_and_resolve_references()
    node, leaf = (c.data, key.split(".")[1]) if "." in key else (c, key)
    node[leaf] = value
    with pytest.raises(ConfigError, match=rf"--config\.{key}=.*must be a finite number"):
        config_checks.validate(c)


def test_the_train_command_refuses_a_nan_learning_rate_and_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "mend_jax.train", "--config=configs/gen.py", "--config.lr=nan",
                          f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "error: --config.lr=nan: must be a finite number" in out.stderr
    assert "Traceback" not in out.stderr and not workdir.exists()


def test_the_activation_propagates_nan_and_keeps_torchs_derivative():
    x = jnp.array([jnp.nan, -1.0, 0.0, 2.0])
    out = clamp_min_zero(x)
    ref = torch.tensor([float("nan"), -1.0, 0.0, 2.0]).clamp(min=0).numpy()
    np.testing.assert_array_equal(np.asarray(out), ref)  # NaN stays NaN, as in torch
    assert np.isnan(np.asarray(out)[0])
    np.testing.assert_array_equal(jax.grad(lambda v: clamp_min_zero(v).sum())(x[1:]), [0.0, 1.0, 1.0])


def with_nan(tree, leaf_index=0):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves[leaf_index] = leaves[leaf_index].at[(0,) * leaves[leaf_index].ndim].set(jnp.nan)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def test_an_editor_with_a_nan_can_be_neither_saved_nor_applied(editor, tmp_path):
    bad = with_nan(editor.params)
    name = next(iter(editor_files.flatten("params", bad)))
    with pytest.raises(NonFiniteEditor, match=f"in {name}"):
        Editor(editor.config, editor.model, editor.editor, bad, editor.stats)
    with pytest.raises(NonFiniteEditor, match=f"in {name}"):
        editor_files.save_editor(str(tmp_path / "ed"), bad, editor.stats, editor.config,
                                 editor_files.identity(editor.config, editor.model.target.inner_paths,
                                                       editor.model.params))
    assert not (tmp_path / "ed").exists()


def test_a_run_whose_kept_editor_is_not_finite_fails_and_exports_nothing(gen_config, tmp_path, monkeypatch):
    c = gen_config.copy_and_resolve_references()
    c.max_iters, c.val_interval, c.val_steps, c.eval_chunk, c.final_eval_steps = 2, 1, 1, 1, 1
    c.async_checkpointing = False
    trainer = Trainer(c, experiments.build(c), str(tmp_path / "run"))
    final = Trainer._final_state
    monkeypatch.setattr(Trainer, "_final_state",
                        lambda self, *a: (lambda s: s.replace(params=with_nan(s.params)))(final(self, *a)))
    with pytest.raises(TrainingDiverged, match="non-finite values .* nothing was exported"):
        trainer.run()
    assert not (tmp_path / "run" / "editor").exists()


# ----- 3. and 8. arguments are checked the same way by the CLI and the API ------------------------

def test_numeric_arguments_and_prompt_types_are_checked_in_the_api_and_the_cli(gen_run, editor, capsys):
    for bad in (0, -1, True, 2.0):
        with pytest.raises(EditInputError, match="max_new_tokens must be a positive integer"):
            Editor.from_run(gen_run, max_new_tokens=bad)
    for bad in (0, -3):
        with pytest.raises(EditInputError, match="batch_size must be a positive integer"):
            editor.edit(PROMPTS, TARGETS, batch_size=bad)
    with pytest.raises(EditInputError, match="prompts must be a string or a list of strings, got dict"):
        editor.edit({"w1": "w2"}, TARGETS[:1])
    for flag in ("--max-new-tokens", "--batch-size"):
        for value in ("0", "-2"):
            code, err = edit_cli_error(capsys, "--run", gen_run, "--prompt", "w1", "--target", "w2", flag, value)
            assert code == 2 and f"{flag} must be a positive integer, got {value}" in err


# ----- 4. output locations are checked before any work --------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Fails a test in which an edit starts: the output checks must come first."""
    monkeypatch.setattr(Editor, "apply", lambda *a, **k: pytest.fail("edited before checking the output"))


def test_an_out_that_is_a_file_or_unwritable_fails_before_any_edit(gen_run, tmp_path, capsys, no_work):
    a_file = tmp_path / "model.bin"
    a_file.write_text("mine")
    code, err = edit_cli_error(capsys, "--run", gen_run, "--prompt", "w1", "--target", "w2", "--out", str(a_file))
    assert code == 2 and "is a file, not a directory" in err and a_file.read_text() == "mine"
    code, err = edit_cli_error(capsys, "--run", gen_run, "--prompt", "w1", "--target", "w2",
                               "--out", "/proc/mend_jax_out")
    assert code == 2 and "/proc is not writable" in err
    assert no_partials(tmp_path)


def test_an_unwritable_run_directory_without_out_fails_before_any_edit(gen_run, tmp_path, capsys, monkeypatch,
                                                                       no_work):
    run = str(tmp_path / "run")
    shutil.copytree(gen_run, run)
    # Permission bits do not stop root, so the test makes the file system refuse, as a read-only mount does.
    real = outputs.tempfile.mkdtemp

    def read_only(*args, dir=None, **kwargs):
        if dir and os.path.abspath(dir).startswith(run):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", read_only)
    code, err = edit_cli_error(capsys, "--run", run, "--prompt", "w1", "--target", "w2")
    assert code == 2 and "is not writable (Read-only file system)" in err and "metrics file" in err
    monkeypatch.undo()
    with open(os.path.join(run, "edits"), "w"):  # a file where the metrics directory goes
        pass
    monkeypatch.setattr(Editor, "apply", lambda *a, **k: pytest.fail("edited before checking the output"))
    code, err = edit_cli_error(capsys, "--run", run, "--prompt", "w1", "--target", "w2")
    assert code == 2 and "is a file, not a directory" in err


def test_a_full_disk_is_found_before_the_edit_and_while_writing_leaves_nothing(gen_run, tmp_path, capsys,
                                                                             monkeypatch):
    out = str(tmp_path / "edited")
    args = ["--run", gen_run, "--prompt", "w1 w2", "--target", "w3", "--max-new-tokens", "2", "--out", out]
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with monkeypatch.context() as m:
        m.setattr(Editor, "apply", lambda *a, **k: pytest.fail("edited before checking the space"))
        code, err = edit_cli_error(capsys, *args)
    assert code == 2 and "not enough disk space" in err and "MiB needed" in err
    monkeypatch.undo()
    assert edit_cli.main(args) == 0
    earlier = tree_listing(out)
    capsys.readouterr()
    from mend_jax import models

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(models, "save_pretrained", disk_full)
    code, err = edit_cli_error(capsys, *args)
    assert code == 2 and "No space left on device" in err
    assert tree_listing(out) == earlier and no_partials(tmp_path)


# ----- 6. an editor records what it was trained for -------------------------------------------------

def copy_editor(gen_run, dest, change=None):
    shutil.copytree(os.path.join(gen_run, "editor"), dest)
    if change:
        path = os.path.join(dest, editor_files.META)
        with open(path) as f:
            meta = json.load(f)
        change(meta)
        with open(path, "w") as f:
            json.dump(meta, f)
    return str(dest)


def test_an_editor_is_refused_by_other_layers_and_other_weights(gen_run, tmp_path):
    meta = editor_files.read_meta(os.path.join(gen_run, "editor"))
    inner = meta["config"]["model"]["inner_params"]
    assert meta["inner_params"] == inner and len(meta["inner_weights_sha256"]) == 64 and meta["edits_per_step"] == 1
    other_layers = [name.replace(".h.1.", ".h.0.").replace(".h.2.", ".h.1.") for name in inner]  # same shapes

    def layers(m):
        m["config"]["model"]["inner_params"] = other_layers

    with pytest.raises(EditorFileError, match="come from different editors"):
        Editor.load(copy_editor(gen_run, tmp_path / "layers", layers))

    def both_layers(m):  # editor.json consistent with itself, the weights file still says otherwise
        layers(m)
        m["inner_params"] = other_layers

    with pytest.raises(EditorFileError, match="come from different editors"):
        Editor.load(copy_editor(gen_run, tmp_path / "both", both_layers))
    # Same architecture and shapes, other weights (another seed): refused by the weights' hash.
    other = tmp_path / "other_model"
    module, params = tiny.tiny_gpt2(vocab=editor_vocab(meta), seed=1)
    from mend_jax import models

    models.save_pretrained(module, params, str(other))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(meta["config"]["model"]["name"], name)
        if os.path.exists(src):
            shutil.copy(src, other / name)

    def model(m):
        m["config"]["model"]["name"] = m["config"]["model"]["tokenizer"] = str(other)

    with pytest.raises(EditorFileError, match="trained for other weights than this model's"):
        Editor.load(copy_editor(gen_run, tmp_path / "model", model))


def editor_vocab(meta):
    with open(os.path.join(meta["config"]["model"]["name"], "config.json")) as f:
        return json.load(f)["vocab_size"]


def test_far_more_edits_per_step_than_trained_warn_with_both_numbers(editor, gen_run, tmp_path, capsys):
    many = [f"w{i} w{i + 1}" for i in range(1, 6)]
    with pytest.warns(EditScaleWarning, match=r"trained with 1 edit\(s\) per step and is applied to 5 at once"):
        editor.edit(many, ["w9"] * 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        editor.edit(many, ["w9"] * 5, batch_size=1)
    assert not [w for w in caught if issubclass(w.category, EditScaleWarning)]
    edits = tmp_path / "many.jsonl"
    edits.write_text("\n".join(json.dumps({"prompt": p, "target": "w9"}) for p in many) + "\n")
    assert edit_cli.main(["--run", gen_run, "--edits", str(edits), "--max-new-tokens", "2"] +
                         ["--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: this editor was meta-trained with 1 edit(s) per step and is applied to 5 at once" in err


# ----- 7. errors that were tracebacks -----------------------------------------------------------------

def test_an_edits_file_that_is_not_utf8_or_a_directory_is_one_error(gen_run, tmp_path, capsys):
    edits = tmp_path / "edits.jsonl"
    edits.write_bytes(b'{"prompt": "w1", "target": "w2"}\n{"prompt": "caf\xe9", "target": "w3"}\n')
    code, err = edit_cli_error(capsys, "--run", gen_run, "--edits", str(edits))
    assert code == 2 and "edits.jsonl, line 2: not UTF-8 text" in err
    code, err = edit_cli_error(capsys, "--run", gen_run, "--edits", str(tmp_path))
    assert code == 2 and "is a directory, not a file" in err


@pytest.mark.parametrize("key, value, message", [
    ("mend.rank", "abc", r"mend\.rank='abc': must be a positive integer"),
    ("edit_lr", "fast", r"edit_lr='fast': a learning rate must be a number"),
    ("alg", "rome", r"alg='rome': not implemented"),
])
def test_an_editor_json_with_a_bad_field_is_one_error_naming_the_file(gen_run, tmp_path, capsys, key, value, message):
    def change(m):
        node = m["config"]
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value

    run = tmp_path / "run"
    run.mkdir()
    copy_editor(gen_run, run / "editor", change)
    with pytest.raises(EditorFileError, match=rf"editor\.json: {message}"):
        Editor.load(str(run / "editor"))
    code, err = edit_cli_error(capsys, "--run", str(run), "--prompt", "w1", "--target", "w2")
    assert code == 2 and "editor.json" in err


def test_no_inner_params_and_an_unknown_alg_or_task_are_config_errors(gen_config):
    c = gen_config.copy_and_resolve_references()
    c.model.inner_params = ()
    with pytest.raises(ConfigError, match=r"--config\.model\.inner_params=\(\): must name at least one"):
        experiments.check_config(c)
    c = gen_config.copy_and_resolve_references()
    c.alg = "rome"
    with pytest.raises(ConfigError, match=r"--config\.alg='rome': not implemented"):
        config_lib.apply_alg_defaults(c)
    c = gen_config.copy_and_resolve_references()
    c.task = "xyz"
    with pytest.raises(ConfigError, match=r"--config\.task='xyz': not implemented"):
        experiments.check_config(c)


def test_an_over_long_prompt_is_one_line_naming_the_file_and_line(gen_run, tmp_path, capsys):
    edits = tmp_path / "edits.jsonl"
    long_prompt = " ".join(["w1"] * 40)  # the tiny GPT-2 has 32 positions
    edits.write_text(json.dumps({"prompt": "w1 w2", "target": "w3"}) + "\n" +
                     json.dumps({"prompt": long_prompt, "target": "w3"}) + "\n")
    code, err = edit_cli_error(capsys, "--run", gen_run, "--edits", str(edits))
    assert code == 2 and f"{edits}, line 2: the prompt with its target is" in err and "32 positions" in err
    code, err = edit_cli_error(capsys, "--run", gen_run, "--prompt", "w1", "--target", "w2",
                               "--locality", long_prompt)
    assert code == 2 and "--locality" in err
