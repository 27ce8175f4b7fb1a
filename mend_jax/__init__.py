"""mend-jax: fast model editing (MEND, EFK, ENN) in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):  # `from mend_jax import Editor` without importing JAX for every submodule
    if name in ("Editor", "EditResult"):
        from mend_jax.editing import editor

        return getattr(editor, name)
    raise AttributeError(f"module 'mend_jax' has no attribute {name!r}")
