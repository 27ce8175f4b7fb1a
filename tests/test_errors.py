"""Inputs that used to end with exit 0 and a wrong result, or a buried traceback: each is a clear error."""
import io
import os
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax import checkpointing, config_checks, experiments, models
from mend_jax.checkpointing import CheckpointError, Checkpointer
from mend_jax.config_checks import ConfigError
from mend_jax.data.io import DataFormatError
from mend_jax.data.zsre import load_zsre
from mend_jax.progress import LineProgress
from mend_jax.trainer import DivergenceCheck, Trainer, TrainingDiverged
from tests import kilt_fixtures, tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mend_jax.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


# ----- silent wrong results ----------------------------------------------------------------------

def test_lengths_beyond_the_position_table_are_refused(gen_config):
    model_config = types.SimpleNamespace(n_positions=128)
    cfg = gen_config.copy_and_resolve_references()
    cfg.data.max_length = 200
    with pytest.raises(ConfigError, match=r"data\.max_length=200 .*128 positions"):
        experiments.check_lengths(cfg, model_config)
    cfg.data.max_length, cfg.data.loc_max_length = 40, 129
    with pytest.raises(ConfigError, match=r"data\.loc_max_length=129"):
        experiments.check_lengths(cfg, model_config)
    cfg.data.loc_max_length = -1  # the position table itself
    experiments.check_lengths(cfg, model_config)
    experiments.check_lengths(cfg, types.SimpleNamespace())  # relative positions (T5): no limit


def test_a_model_directory_without_tokenizer_files_is_refused(gen_config, tmp_path):
    # transformers builds a handful-of-specials tokenizer from a directory with only a model in it.
    model_dir = str(tmp_path / "model")
    module, params = tiny.tiny_gpt2(vocab=300)
    models.save_pretrained(module, params, model_dir)
    cfg = gen_config.copy_and_resolve_references()
    expected = r"has \d+ tokens but the model's embedding has 300 rows; .*holds config\.json, model\.safetensors, so a tokenizer needs one of"
    with pytest.raises(ConfigError, match=expected):  # gen: before the [PAD] row is added
        experiments.load_model_and_tokenizer(cfg, model_dir, model_dir)
    cfg.model.pad_token_fix = False
    module, _, tokenizer = experiments.load_model_and_tokenizer(cfg, model_dir, model_dir)
    with pytest.raises(ConfigError, match=expected):  # every task, once the model type is known to fit
        experiments.check_model_inputs(cfg, module, tokenizer, model_dir)


def test_a_data_path_on_a_world_config_is_an_error_not_ignored():
    cfg = tiny.repo_config("gen").get_config("world")
    assert cfg.data.path == "" and cfg.data.loc_path == ""  # the world brings its own data
    cfg.data.path = "/nonexistent"
    with pytest.raises(ConfigError, match=r"data\.path='/nonexistent'.*data\.source=files"):
        experiments.build(cfg)


def test_inner_params_can_be_set_on_the_command_line(tmp_path):
    script = (
        "from absl import app\nfrom mend_jax import train\n"
        "app.run(lambda argv: print(list(train._CONFIG.value.model.inner_params)), flags_parser=train.parse_flags)\n"
    )
    repeated = ["--config.model.inner_params=h.3.mlp.c_fc.weight", "--config.model.inner_params=h.3.mlp.c_proj.weight"]
    as_tuple = ["--config.model.inner_params=('h.3.mlp.c_fc.weight', 'h.3.mlp.c_proj.weight')"]
    for overrides in (repeated, as_tuple):
        out = subprocess.run([sys.executable, "-c", script, "--config=configs/gen.py", *overrides], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "['h.3.mlp.c_fc.weight', 'h.3.mlp.c_proj.weight']"


def test_a_diverged_run_stops_and_results_count_the_runs_own_skips(gen_config, experiment, tmp_path, monkeypatch):
    cfg = gen_config.copy_and_resolve_references()
    cfg.async_checkpointing = False

    def poisoned_init(trainer):
        state = Trainer.init_state(trainer)  # every batch's gradient is then non-finite
        return state.replace(params={**state.params, "edit_lrs": state.params["edit_lrs"].at[0].set(np.inf)})

    trainer = Trainer(cfg, experiment, str(tmp_path / "stops"))
    monkeypatch.setattr(trainer, "init_state", lambda: poisoned_init(trainer))
    with pytest.raises(TrainingDiverged, match=r"diverged: 3 of the 3 batches of steps 0-2"):
        trainer.run()

    # Skipping on: the editor kept from the clean validation at step 0 has a checkpoint that
    # counted no skips, but the run skipped every batch from step 3 on, and results say so.
    cfg.max_skipped_fraction = 1.0
    trainer = Trainer(cfg, experiment, str(tmp_path / "skips"))
    grad_step = trainer._grad_step

    def poisoned_from_step_3(state, base_params, batch):
        if int(state.step) >= 3:
            state = state.replace(params={**state.params, "edit_lrs": state.params["edit_lrs"].at[0].set(np.inf)})
        return grad_step(state, base_params, batch)

    monkeypatch.setattr(trainer, "_grad_step", poisoned_from_step_3)
    results = trainer.run()
    assert results["kept_step"] == 0 and results["steps_trained"] == cfg.max_iters == 6
    assert results["n_skipped_batches"] == 3


def test_divergence_check_counts_per_window():
    check = DivergenceCheck(0.5, n_skipped=0, step=0)
    check.check(n_skipped=5, step=10)  # 5 of 11: not more than half
    with pytest.raises(TrainingDiverged, match="6 of the 10 batches of steps 11-20"):
        check.check(n_skipped=11, step=20)


def test_resuming_with_another_config_is_an_error(gen_config, experiment, tmp_path):
    cfg = gen_config.copy_and_resolve_references()
    cfg.update(dict(async_checkpointing=False, max_iters=3))
    workdir = str(tmp_path / "run")
    Trainer(cfg, experiment, workdir).run()
    assert config_checks.load(workdir)["lr"] == cfg.lr

    changed = cfg.copy_and_resolve_references()
    changed.lr, changed.seed = cfg.lr * 3, 7
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.003; seed: 0 -> 7.*new --workdir"):
        Trainer(changed, experiment, workdir).run()

    longer = cfg.copy_and_resolve_references()
    longer.max_iters = 5  # a resumable key: the run continues
    assert Trainer(longer, experiment, workdir).run()["steps_trained"] == 5


def test_max_iters_zero_is_refused(gen_config):
    cfg = gen_config.copy_and_resolve_references()
    cfg.max_iters = 0
    with pytest.raises(ConfigError, match=r"max_iters=0.*eval_only"):
        config_checks.validate(cfg)
    cfg.eval_only = True
    config_checks.validate(cfg)  # evaluating a finished run trains nothing
    config_checks.validate(cfg.copy_and_resolve_references(), trains=False)  # FT meta-trains nothing


@pytest.mark.parametrize("key, value", [("accumulate_bs", 0), ("checkpoint_interval", 0), ("val_interval", -1),
                                        ("grad_clip", 0.0), ("data.loc_pct", 0.0)])
def test_bad_intervals_are_refused_before_any_work(gen_config, key, value):
    cfg = gen_config.copy_and_resolve_references()
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value
    with pytest.raises(ConfigError, match=rf"--config\.{key}="):
        config_checks.validate(cfg)


def test_inner_params_that_are_not_matrices_or_are_repeated(model):
    module, params, _ = model
    with pytest.raises(ValueError, match=r"has shape \(\d+,\).*weight matrices"):
        models.inner_param_paths(module, params, ["transformer.h.0.ln_1.weight"])
    with pytest.raises(ValueError, match="names the same matrix as 'transformer.h.0.mlp.c_fc.weight'"):
        models.inner_param_paths(module, params, ["transformer.h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.weight"])


@pytest.mark.parametrize("field, where", [("input", "'input' is empty"),
                                          ("filtered_rephrases", "'filtered_rephrases'\\[0\\] is empty"),
                                          ("answer", "'output\\[0\\].answer' is empty")])
def test_empty_zsre_strings_name_the_file_and_line(tmp_path, field, where):
    rows = kilt_fixtures.zsre_rows(3)
    if field == "answer":
        rows[1]["output"][0]["answer"] = " "
    elif field == "filtered_rephrases":
        rows[1]["filtered_rephrases"][0] = ""
    else:
        rows[1]["input"] = ""
    path = str(tmp_path / "zsre.jsonl")
    kilt_fixtures.write_jsonl(path, rows)
    with pytest.raises(DataFormatError, match=rf"zsre\.jsonl, line 2: {where}"):
        load_zsre(path)


# ----- one line, exit code 2 ---------------------------------------------------------------------

def test_unknown_key_and_unwritable_workdir_are_one_line(tmp_path):
    out = _cli("--config=configs/gen.py", "--config.not_a_key=3")
    assert out.returncode == 2 and out.stderr.strip() == "error: --config.not_a_key=3: unknown config key 'not_a_key'"
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = _cli("--config=configs/gen.py", f"--workdir={blocker}/run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith(f"error: --workdir '{blocker}/run' is not writable")


def test_progress_prints_lines_not_frames_when_not_a_terminal():
    stream = io.StringIO()
    bar = LineProgress(total=100, desc="meta-train", stream=stream)
    for _ in range(100):
        bar.set_postfix({"ES": "0.50"})
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 20
    assert lines[-1].startswith("meta-train: 100/100 (") and lines[-1].endswith(", ES=0.50)")


# ----- checkpoints: full disks, corrupt files, another run's state ----------------------------------

def _saved(workdir, steps, size=3):
    ckpt = Checkpointer(workdir, async_save=False)
    for step in steps:
        ckpt.save_latest(step, {"w": np.full((size,), float(step), np.float32)})
    return ckpt


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    _saved(str(tmp_path), [2, 4]).close()
    newest = tmp_path / "checkpoints" / "latest" / "4"
    for path in newest.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    with pytest.warns(UserWarning, match=r"latest/4 is unreadable .*resumed from step 2"):
        restored = ckpt.restore({"w": np.zeros((3,), np.float32)}, "latest")
    np.testing.assert_array_equal(restored["w"], np.full((3,), 2.0))
    ckpt.close()


def test_a_checkpoint_of_other_shapes_says_what_to_do(tmp_path):
    _saved(str(tmp_path), [2]).close()
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    with pytest.raises(CheckpointError, match=r"another config .*mend\.rank.*new --workdir"):
        ckpt.restore({"w": jnp.zeros((5,), jnp.float32)}, "latest")  # device arrays, as the trainer's state
    ckpt.close()


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    ckpt = _saved(str(tmp_path), [2])
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=10))
    with pytest.raises(CheckpointError, match=r"not enough disk space .*checkpoints: 0 MiB free.*resumes"):
        ckpt.save_latest(4, {"w": np.zeros((3,), np.float32)})
    ckpt.close()
    monkeypatch.undo()
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    np.testing.assert_array_equal(ckpt.restore({"w": np.zeros((3,), np.float32)})["w"], np.full((3,), 2.0))
    ckpt.close()


def test_a_full_disk_stops_a_run_before_it_trains(gen_config, experiment, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=10))
    with pytest.raises(CheckpointError, match="not enough disk space"):
        Trainer(gen_config, experiment, str(tmp_path)).run()
    assert not (tmp_path / "checkpoints" / "latest").exists() or not any((tmp_path / "checkpoints" / "latest").iterdir())


def test_an_unknown_world_or_a_small_world_for_qa_is_refused_before_any_build():
    small = tiny.repo_config("gen").get_config("world_small")
    assert small.data.world == "small" and small.val_steps == 54
    experiments.check_config(small)  # gen has a small world
    small.data.world = "huge"
    with pytest.raises(ValueError, match=r"data\.world must be one of \['default', 'small'\], got 'huge'"):
        experiments.check_config(small)
    qa = tiny.repo_config("qa").get_config()
    qa.data.world = "small"
    with pytest.raises(ConfigError, match=r"data\.world='small'.*qa's world model is built for the default world"):
        experiments.check_config(qa)


def test_a_run_saved_before_data_world_existed_resumes_as_the_default_world():
    saved, current = {"data": {"source": "world"}}, {"data": {"source": "world", "world": "default"}}
    assert config_checks.differences(saved, current) == []
    current["data"]["world"] = "small"
    assert config_checks.differences(saved, current) == [("data.world", "default", "small")]


def test_a_run_saved_before_opt_mu_dtype_existed_resumes_in_float32():
    import jax

    from mend_jax import config_lib
    from mend_jax.trainer import make_optimizer

    saved, current = {"lr": 1e-6}, {"lr": 1e-6, "opt_mu_dtype": "float32"}
    assert config_checks.differences(saved, current) == []
    current["opt_mu_dtype"] = "bfloat16"
    assert config_checks.differences(saved, current) == [("opt_mu_dtype", "float32", "bfloat16")]
    old = config_lib.apply_alg_defaults(config_lib.base_config())
    del old["opt_mu_dtype"]  # the config an older run's editor.json or config.json restores
    state = make_optimizer(old, None).init({"w": jnp.zeros(3)})
    assert jax.tree_util.tree_leaves(state)[1].dtype == jnp.float32  # Adam's mu


def test_lean_host_memory_without_glibc_is_a_usage_error():
    script = (
        "from absl import app\nfrom mend_jax import host_memory, train\n"
        "host_memory.lean = lambda: False  # as on an allocator that is not glibc's\n"
        "app.run(train.main, flags_parser=train.parse_flags)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, "--config=configs/gen.py", "--host_memory=lean"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--host_memory=lean needs glibc's malloc" in out.stderr, out.stderr[-2000:]
