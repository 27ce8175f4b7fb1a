"""mend-jax: fast model editing (MEND, EFK, ENN) in JAX/Flax."""

__version__ = "0.1.0"
