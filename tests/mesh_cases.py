"""Checks that need 8 devices, run by tests/test_mesh.py in a subprocess with 8 simulated CPU
devices (XLA reads the device count once, when JAX starts):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.mesh_cases CASE ARG...

Each case raises AssertionError on failure; the subprocess's exit status is the test's result.
"""
import os
import sys
import tempfile

import jax
import numpy as np

from mend_jax import config_lib, data_parallel, editors, experiments
from mend_jax.trainer import Experiment, Trainer
from tests import kilt_fixtures, tiny

MESHES = {"8x1": (8, 1), "4x2": (4, 2), "2x4": (2, 4), "1x8": (1, 8)}


def tiny_config(model: str, alg: str, root: str):
    config = (tiny.write_gen_experiment(root) if model == "gpt2"
              else kilt_fixtures.write_qa_experiment(root))
    config.alg = alg
    config.accumulate_bs = 8  # a multiple of every data axis below
    config.log_interval = config.val_interval = 8
    config.sharding.min_size = 16  # the tiny models' matrices are sharded too
    return config


def with_mesh(config, data: int, fsdp: int):
    c = config.copy_and_resolve_references()
    c.mesh.data, c.mesh.fsdp = data, fsdp
    return c


def nudged(state):
    """A trained-looking state, so that no gradient is trivially zero."""
    rng = np.random.RandomState(0)
    params = jax.tree_util.tree_map(lambda x: x + 0.01 * rng.standard_normal(x.shape).astype(x.dtype), state.params)
    return state.replace(params=params)


def on(trainer, state):
    """`state` laid out as `trainer` lays out its own."""
    return jax.device_put(jax.device_get(state), trainer.state_shardings)


def sequential_steps(trainer, state, n):
    """Batch 0 (the first window's extra batch), batches 1..n one at a time, then the update."""
    for i in range(n + 1):
        state, _ = trainer._grad_step(state, trainer.base_params, trainer.exp.train_data.train_batch(i))
    return state


def sharded_steps(trainer, state, n):
    """The same batches as `trainer._train` takes them on its mesh: groups ending on multiples of D."""
    step = 0
    while step <= n:
        indices = data_parallel.group(step, trainer.n_data, n + 1)
        state, _ = trainer._train_group(state, indices)
        step = indices[-1] + 1
    return state


def assert_states_close(got, want, what, atol=2e-7):
    got, want = jax.device_get(got), jax.device_get(want)
    flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
    flat_want = jax.tree_util.tree_leaves(want)
    assert len(flat_got) == len(flat_want)
    for (path, g), w in zip(flat_got, flat_want):
        name = f"{what}: {jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=2e-5, atol=atol,
                                   err_msg=name)


def case_equivalence(model: str, alg: str, meshes: str):
    """One sharded step over D batches == D sequential single-device steps, for each mesh."""
    assert len(jax.devices()) == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    with tempfile.TemporaryDirectory() as root:
        config = tiny_config(model, alg, root)
        experiment = experiments.build(config)
        single = Trainer(config, experiment, os.path.join(root, "single"), devices=jax.devices()[:1])
        start = nudged(single.init_state())
        n = config.accumulate_bs
        want = sequential_steps(single, on(single, start), n)
        want_updated = jax.device_get(single._apply_step(on(single, want)))
        assert int(want.step) == n + 1
        for name in meshes.split(","):
            data, fsdp = MESHES[name]
            sharded = Trainer(with_mesh(config, data, fsdp), experiment, os.path.join(root, name))
            got = sharded_steps(sharded, on(sharded, start), n)
            what = f"{model} {alg} mesh {name}"
            assert_states_close(got, want, what)  # the accumulated gradient and the statistics
            assert_laid_out_by_rules(sharded, got)
            updated = sharded._apply_step(got)
            assert_laid_out_by_rules(sharded, updated)
            # Adam's first update is about lr * sign(g): a gradient entry near 0 turns its fp32
            # rounding into up to ~lr of difference, so the parameters get an lr-scaled tolerance.
            assert_states_close(updated.opt_state, want_updated.opt_state, what + " (optimizer)")
            assert_states_close(updated.params, want_updated.params, what + " (updated)", atol=1e-3 * config.lr)
            assert_evaluation_split_over_data(sharded, single, start, what)
            print(f"{what}: equal", flush=True)


def assert_evaluation_split_over_data(sharded, single, state, what):
    """Validation on the mesh scores what one device scores, each data-parallel device taking
    its own rows of a chunk: its FLOPs per device fall by the data axis's size (and by fsdp's
    share of the products, which XLA's partitioner splits)."""
    got, want = sharded.evaluate(on(sharded, state)), single.evaluate(on(single, state))
    assert got["n_batches_evaluated"] == want["n_batches_evaluated"] == single.exp.val_data.n_eval_batches
    # drawdown is the difference of two metrics checked here (perplexities or accuracies): their
    # fp32 rounding, ~1e-7 relative, is up to 1e-2 of a small difference.
    for key in want:
        if not key.startswith("time/") and key != "drawdown":
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=f"{what}: {key}")
    per_batch = {}
    for name, trainer in (("mesh", sharded), ("one device", single)):
        # evaluate()'s first call, compiled already.
        n = trainer.exp.val_data.n_eval_batches
        rows = trainer.eval_chunk_size(n)
        chunk = trainer._eval_chunk(0, rows, n)
        s = on(trainer, state)
        cost = trainer._evaluate.lower(s.params, s.stats, trainer.base_params, chunk).compile().cost_analysis()
        per_batch[name] = (cost[0] if isinstance(cost, list) else cost)["flops"] / rows
    assert per_batch["mesh"] <= 1.1 * per_batch["one device"] / sharded.n_data, (what, per_batch)


def assert_laid_out_by_rules(trainer, state):
    """Every leaf lives where the rules put it, and the rules shard what they should."""
    fsdp = trainer.mesh.shape["fsdp"]
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    expected = jax.tree_util.tree_leaves(trainer.state_shardings)
    n_sharded = 0
    for (path, leaf), sharding in zip(leaves, expected):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), jax.tree_util.keystr(path)
        spec = tuple(sharding.spec) + (None,) * (leaf.ndim - len(sharding.spec))
        divisible = [d for d in range(leaf.ndim) if leaf.shape[d] % fsdp == 0]
        if fsdp > 1 and leaf.size >= trainer.config.sharding.min_size and divisible:
            (axis,) = [d for d, s in enumerate(spec) if s == "fsdp"]
            assert leaf.shape[axis] == max(leaf.shape[d] for d in divisible), jax.tree_util.keystr(path)
            n_sharded += 1
        else:
            assert all(s is None for s in spec), jax.tree_util.keystr(path)
    assert fsdp == 1 or n_sharded > 0


def case_checkpoint_across_meshes(model: str, alg: str):
    """A checkpoint saved mid-window on a (4, 2) mesh restores on (1, 1) and (8, 1), and every
    mesh then takes the same next steps."""
    from mend_jax.checkpointing import Checkpointer

    with tempfile.TemporaryDirectory() as root:
        config = tiny_config(model, alg, root)
        experiment = experiments.build(config)
        workdir = os.path.join(root, "run")
        saver = Trainer(with_mesh(config, 4, 2), experiment, workdir)
        state = sharded_steps(saver, on(saver, nudged(saver.init_state())), 4)  # batches 0..4: mid-window
        saved = jax.device_get(state)
        ckpt = Checkpointer(workdir, async_save=False)
        ckpt.save_latest(5, state)
        ckpt.close()
        finals = {}
        for name, (data, fsdp), devices in (("1x1", (1, 1), jax.devices()[:1]), ("8x1", (8, 1), None),
                                            ("4x2", (4, 2), None)):
            trainer = Trainer(with_mesh(config, data, fsdp), experiment, workdir, devices=devices)
            ckpt = Checkpointer(workdir, async_save=False)
            restored = ckpt.restore(trainer.init_state(), "latest")
            ckpt.close()
            assert_states_close(restored, saved, f"restored on {name}", atol=0)
            assert_laid_out_by_rules(trainer, restored)
            # Batches 5..8 close the window: one at a time on 1x1, one group of 4 on 8x1 and 4x2.
            state = restored
            while int(state.step) <= 8:
                state, _ = trainer._train_group(state, data_parallel.group(int(state.step), trainer.n_data, 9))
            finals[name] = jax.device_get(state)
        for name in ("8x1", "4x2"):
            assert_states_close(finals[name], finals["1x1"], f"next steps on {name} vs 1x1")
        print("checkpoint across meshes: equal", flush=True)


def case_memory(model: str):
    """The compiled step holds 1/fsdp of every sharded leaf per device, and less in all."""
    with tempfile.TemporaryDirectory() as root:
        config = tiny_config(model, "mend", root)
        experiment = experiments.build(config)
        totals = {}
        for fsdp in (1, 8):
            trainer = Trainer(with_mesh(config, 1, fsdp), experiment, os.path.join(root, str(fsdp)),
                              devices=jax.devices()[:fsdp])
            state = trainer.init_state()
            batch = experiment.train_data.train_batch(0)
            memory = trainer._grad_step.lower(state, trainer.base_params, batch).compile().memory_analysis()
            # What the shardings say one device holds of the arguments (state, base model, batch);
            # jit drops the few unused ones (a few scalars and batch fields).
            expected = sum(
                leaf.addressable_shards[0].data.nbytes
                for leaf in jax.tree_util.tree_leaves((state, trainer.base_params))
            ) + sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(batch))
            assert expected - 1024 <= memory.argument_size_in_bytes <= expected, (fsdp, memory, expected)
            totals[fsdp] = memory.argument_size_in_bytes + memory.temp_size_in_bytes
            print(f"fsdp={fsdp}: arguments {memory.argument_size_in_bytes} B, temporaries "
                  f"{memory.temp_size_in_bytes} B", flush=True)
        assert totals[8] < totals[1] / 2, totals
        print("memory falls with fsdp", flush=True)


def case_abstract_plan():
    """A step compiled from abstract base params (nothing allocated) has the real step's memory."""
    _, params, target = tiny.tiny_decoder("llama")
    batch = tiny.meta_batch()
    memory = {}
    for kind in ("real", "abstract"):
        base = params if kind == "real" else jax.eval_shape(lambda: params)
        config = config_lib.apply_alg_defaults(config_lib.base_config())
        config.mesh.fsdp, config.sharding.min_size = 8, 16
        editor = editors.MEND(target, base, config.mend, edit_lr=config.edit_lr)
        live_before = sum(x.nbytes for x in jax.live_arrays())
        data = tiny.OneBatch(batch)
        with tempfile.TemporaryDirectory() as root:
            trainer = Trainer(config, Experiment(editor, target, base, data, data, lambda m: 0.0), root)
            state = trainer.init_state() if kind == "real" else trainer.abstract_state()
            compiled = trainer._grad_step.lower(state, trainer.base_params, batch).compile()
        if kind == "abstract":
            leaves = jax.tree_util.tree_leaves((state, trainer.base_params))
            assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
            new_bytes = sum(x.nbytes for x in jax.live_arrays()) - live_before
            assert new_bytes < 1024, f"the abstract plan allocated {new_bytes} B"
        m = compiled.memory_analysis()
        memory[kind] = (m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes)
        print(kind, memory[kind], flush=True)
    assert memory["abstract"] == memory["real"], memory
    print("abstract plan equals the real step", flush=True)


def case_train(root: str, workdir: str, data: str, fsdp: str, *distributed_args):
    """A short run of the trainer (with `distributed_args`: one process of a multi-process job)."""
    if distributed_args:
        coordinator, n_processes, process_id = distributed_args
        from mend_jax import distributed

        assert distributed.initialize("on", coordinator, int(n_processes), int(process_id))
    # Each process writes the (deterministic) model and data to its own directory.
    config = tiny_config("gpt2", "mend", os.path.join(root, f"process{jax.process_index()}"))
    config.max_iters = 17  # two updates: after batches 8 and 16
    config.checkpoint_interval = 8
    config.val_steps = config.eval_chunk = 4
    results = Trainer(with_mesh(config, int(data), int(fsdp)), experiments.build(config), workdir).run()
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices, "
          f"edit/acc_val {results['results']['edit/acc_val']}", flush=True)


if __name__ == "__main__":
    globals()[f"case_{sys.argv[1]}"](*sys.argv[2:])
