"""The meta-training loop: vmapped validation, resume, config errors."""
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from mend_jax.trainer import Trainer
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vmapped_validation_equals_one_by_one(gen_config, experiment, tmp_path):
    trainer = Trainer(gen_config, experiment, str(tmp_path))
    state = trainer.init_state()
    # A trained-looking editor: perturb it so edits are not the identity.
    state = state.replace(params=jax.tree_util.tree_map(lambda x: x + 0.01, state.params))
    batched = trainer.evaluate(state, n_batches=5)  # chunks of 4: one full, one padded
    one_by_one = {}
    for i in range(5):
        batch = jax.tree_util.tree_map(lambda x: x[None], experiment.val_data.eval_batch(i))
        sums = jax.device_get(trainer._evaluate(state.params, state.stats, experiment.base_params, batch))
        for k, v in sums.items():
            one_by_one.setdefault(k, []).append(np.asarray(v)[0])
    from mend_jax import meta

    expected = meta.finalize({k: np.stack(v) for k, v in one_by_one.items()})
    for k, v in expected.items():
        np.testing.assert_allclose(batched[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert batched["n_batches_evaluated"] == batched["n_edits_evaluated"] == 5


class Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_editor(gen_config, experiment, tmp_path, monkeypatch):
    full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
    # One Trainer serves the three runs (only `workdir` differs), so it compiles once.
    full = Trainer(gen_config, experiment, full_dir)
    full_results = full.run()

    # Kill the second run inside step 5: after the checkpoint of step 4, with an
    # accumulation window and the best-checkpoint state in flight.
    full.workdir = killed_dir
    grad_step = full._grad_step
    calls = {"n": 0}

    def dying_grad_step(state, base, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise Killed()
        return grad_step(state, base, batch)

    monkeypatch.setattr(full, "_grad_step", dying_grad_step)
    with pytest.raises(Killed):
        full.run()
    monkeypatch.setattr(full, "_grad_step", grad_step)
    results = full.run()
    a, b = tiny.latest_state(full, full_dir), tiny.latest_state(full, killed_dir)
    assert int(a.step) == int(b.step) == gen_config.max_iters
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(a.stats, b.stats, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(a.opt_state, b.opt_state, rtol=1e-6, atol=1e-7)
    assert not jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda x, y: bool(np.all(x == y)), a.params, full.init_state().params)
    ), "training did not change the editor"
    for r in (full_results, results):
        assert os.path.exists(r["results_path"])
        for key in ("edit/acc_val", "acc/pre_val", "acc/post_val", "perplexity/pre_val", "perplexity/post_val",
                    "loss/edit_val", "loss/loc_val", "loss/total_edit_val", "time/edit_val", "edit/prob_val"):
            assert np.isfinite(r["results"][key]), key
    assert os.listdir(os.path.join(full_dir, "tb"))


def run_cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "mend_jax.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_config_typo_raises():
    out = run_cli("--config=configs/gen.py", "--config.lrr=1e-3")
    assert out.returncode != 0
    assert "lrr" in out.stderr


def test_unknown_config_argument_raises():
    out = run_cli("--config=configs/gen.py:gpt3")
    assert out.returncode != 0 and "unknown argument 'gpt3'" in out.stderr


def test_missing_data_names_what_to_download(tmp_path):
    out = run_cli("--config=configs/gen.py:distilgpt2", f"--config.data.path={tmp_path}/nowhere",
                  f"--workdir={tmp_path}/w")
    assert out.returncode != 0
    assert "nowhere" in out.stderr and "configs/gen.py" in out.stderr


def test_eval_only_without_checkpoint_raises(gen_config, experiment, tmp_path):
    cfg = gen_config.copy_and_resolve_references()
    cfg.eval_only = True
    with pytest.raises(FileNotFoundError, match="eval_only"):
        Trainer(cfg, experiment, str(tmp_path)).run()


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_same_editor(gen_config, experiment, tmp_path):
    """A real SIGKILL (no cleanup, async saves possibly in flight), then the same command again."""
    import signal
    import time

    root = os.path.dirname(gen_config.model.name)
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(
        "from tests import tiny\n"
        f"def get_config():\n    return tiny.write_gen_experiment({root!r})\n"
    )
    args = [f"--config={cfg_file}", "--config.max_iters=10", "--config.val_interval=4"]
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    assert run_cli(*args, f"--workdir={full_dir}").returncode == 0

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "mend_jax.train", *args, f"--workdir={killed_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed_dir / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and any(p.name.isdigit() and int(p.name) >= 4 for p in latest.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(*args, f"--workdir={killed_dir}")
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resumed from step" in resumed.stdout

    evaluated = run_cli(*args, f"--workdir={full_dir}", "--config.eval_only=True")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    with open(full_dir / "results.json") as f:
        assert json.load(f)["results"]["edit/acc_val"] == pytest.approx(
            float(evaluated.stdout.split("edit success (edit/acc_val): ")[1].split()[0]), abs=1e-3
        )

    trainer = Trainer(gen_config, experiment, str(full_dir))
    a, b = tiny.latest_state(trainer, str(full_dir)), tiny.latest_state(trainer, str(killed_dir))
    assert int(a.step) == int(b.step) == 10
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(a.opt_state, b.opt_state, rtol=1e-6, atol=1e-7)


def test_non_finite_batch_is_skipped_and_counted(gen_config, experiment, tmp_path):
    trainer = Trainer(gen_config, experiment, str(tmp_path))
    state = trainer.init_state()
    initial = jax.device_get(state)  # grad_step donates its input state
    batch = experiment.train_data.train_batch(0)
    poisoned = state.replace(params={**state.params, "edit_lrs": state.params["edit_lrs"].at[0].set(np.inf)})
    after, _ = trainer._grad_step(poisoned, experiment.base_params, batch)
    assert int(after.n_skipped) == 1 and int(after.step) == 1
    chex.assert_trees_all_equal(after.grad_acc, jax.tree_util.tree_map(np.zeros_like, initial.grad_acc))
    good, _ = trainer._grad_step(trainer.init_state(), experiment.base_params, batch)
    assert int(good.n_skipped) == 0
    assert any(float(np.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(good.grad_acc))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, None])
def test_norm_and_finite_agrees_with_all_finite_and_optax(bad):
    import optax

    from mend_jax.data_parallel import all_finite, norm_and_finite

    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(64, 48)).astype(np.float32), "b": [rng.normal(size=(7,)).astype(np.float32)]}
    if bad is not None:
        tree["b"][0][3] = bad  # 1e30 is finite, but its square overflows float32
    norm, finite = jax.jit(norm_and_finite)(tree)
    assert bool(finite) == bool(all_finite(tree)) == (bad is None or np.isfinite(bad))
    if bad is None:
        assert float(norm) == float(jax.jit(optax.tree.norm)(tree))  # the same sum, bitwise
    # Batched, as data-parallel training takes each device's batch (the cond becomes a select).
    stacked = jax.tree_util.tree_map(lambda x: np.stack([x, np.ones_like(x)]), tree)
    _, finite_rows = jax.jit(jax.vmap(norm_and_finite))(stacked)
    assert finite_rows.tolist() == [bool(finite), True]


@pytest.mark.parametrize("accumulate_bs", [1, 2, 10])
def test_a_window_starts_at_batch_0_and_after_each_update(accumulate_bs):
    import jax.numpy as jnp

    from mend_jax.accumulation import applies_update, starts_window

    for step in range(45):
        want = step == 0 or applies_update(step - 1, accumulate_bs)
        assert bool(starts_window(step, accumulate_bs)) == want
        assert bool(starts_window(jnp.int32(step), accumulate_bs)) == want, step


def test_an_update_leaves_the_accumulator_and_the_next_window_replaces_it(gen_config, experiment, tmp_path):
    cfg = gen_config.copy_and_resolve_references()
    cfg.accumulate_bs = 2  # windows: batches 0-2, 3-4, ...
    trainer = Trainer(cfg, experiment, str(tmp_path))
    base, batch = trainer.base_params, experiment.train_data.train_batch
    put = lambda host: jax.device_put(host, trainer.state_shardings)  # the steps donate their input
    zeroed = lambda host: host.replace(grad_acc=jax.tree_util.tree_map(np.zeros_like, host.grad_acc))
    state = trainer.init_state()
    for i in range(3):
        state, _ = trainer._grad_step(state, base, batch(i))
    applied = jax.device_get(state.grad_acc)
    # At MEND's init only the editor's u kernels and the α's have a gradient (v's waits on u).
    moving = lambda acc: [layer["u"] for net in acc["nets"].values() for layer in net["mlp"].values()] + [acc["edit_lrs"]]
    assert all(np.abs(g).sum() > 0 for g in moving(applied))
    after = jax.device_get(trainer._apply_step(state))
    chex.assert_trees_all_equal(after.grad_acc, applied)  # the update leaves it as it was
    # Batch 3 starts a window: the stale sum is replaced, as if the accumulator had been zeroed.
    fresh = jax.device_get(trainer._grad_step(put(after), base, batch(3))[0])
    from_zero = jax.device_get(trainer._grad_step(put(zeroed(after)), base, batch(3))[0])
    chex.assert_trees_all_equal(fresh.grad_acc, from_zero.grad_acc)
    # Batch 4 is within the window: its gradient is added to batch 3's.
    added = jax.device_get(trainer._grad_step(put(fresh), base, batch(4))[0])
    alone = jax.device_get(trainer._grad_step(put(zeroed(fresh)), base, batch(4))[0])
    chex.assert_trees_all_equal(added.grad_acc, jax.tree_util.tree_map(np.add, fresh.grad_acc, alone.grad_acc))
    assert all(np.abs(g).sum() > 0 for g in moving(fresh.grad_acc))


def test_early_stopping_ends_the_run(gen_config, experiment, tmp_path):
    cfg = gen_config.copy_and_resolve_references()
    cfg.update(dict(lr=0.0, max_iters=30, val_interval=3, early_stop_patience=3, checkpoint_interval=100))
    trainer = Trainer(cfg, experiment, str(tmp_path))
    results = trainer.run()
    state = tiny.latest_state(trainer, str(tmp_path))
    # With lr 0 only the normalisation statistics move, and validation soon stops improving.
    assert int(state.step) < cfg.max_iters
    assert int(state.step) - 1 - int(state.best_step) == cfg.early_stop_patience
    assert results["step"] == int(state.best_step) + 1  # the kept editor is the best one
    with open(os.path.join(str(tmp_path), "results.json")) as f:
        env = json.load(f)["environment"]  # where the figures were computed
    assert env["libraries"]["jax"] == jax.__version__ and env["devices"] == f"1 x {jax.devices()[0].device_kind}"
    assert env["cpu"] and env["processes"] == 1


def test_bfloat16_first_moment_halves_it_and_trains_the_same_way(gen_config, experiment, tmp_path):
    """opt_mu_dtype=bfloat16 stores Adam's first moment in bfloat16; the second stays float32, and
    the first update is the float32 one to bfloat16 rounding (Adam's first step is about lr·sign(g))."""
    import jax.numpy as jnp
    import optax

    def one_update(mu_dtype, workdir):
        cfg = gen_config.copy_and_resolve_references()
        cfg.opt_mu_dtype = mu_dtype
        cfg.accumulate_bs = 1
        trainer = Trainer(cfg, experiment, workdir)
        state, _ = trainer._grad_step(trainer.init_state(), experiment.base_params, experiment.train_data.train_batch(1))
        state = trainer._apply_step(state)
        adam = next(s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
                    if isinstance(s, optax.ScaleByAdamState))
        return state, adam

    state32, adam32 = one_update("float32", str(tmp_path / "f32"))
    state16, adam16 = one_update("bfloat16", str(tmp_path / "bf16"))
    assert {x.dtype for x in jax.tree_util.tree_leaves(adam16.mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree_util.tree_leaves(adam16.nu)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree_util.tree_leaves(adam32.mu)} == {jnp.dtype(jnp.float32)}
    for a, b in zip(jax.tree_util.tree_leaves(adam32.mu), jax.tree_util.tree_leaves(adam16.mu)):
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a), rtol=1e-2, atol=1e-12)
    lr = gen_config.lr
    for a, b in zip(jax.tree_util.tree_leaves(state32.params), jax.tree_util.tree_leaves(state16.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.02 * lr + 1e-7)


def test_unknown_moment_dtype_is_a_config_error(gen_config, experiment, tmp_path):
    from mend_jax.config_checks import ConfigError

    cfg = gen_config.copy_and_resolve_references()
    cfg.opt_mu_dtype = "float16"
    with pytest.raises(ConfigError, match="opt_mu_dtype"):
        Trainer(cfg, experiment, str(tmp_path))
