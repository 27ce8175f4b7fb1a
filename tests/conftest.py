import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


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
