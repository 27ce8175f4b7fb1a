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
