"""Running mean and variance of factor rows (the reference's Welford statistics).

The reference updates the statistics one row at a time. Merging a whole batch
of rows at once with Chan et al.'s parallel formula gives the same count, mean
and sum of squared deviations, and is one vectorised step. Rows outside `mask`
are ignored; an all-masked batch leaves the statistics unchanged.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

EPS = 1e-7


class RunningStats(NamedTuple):
    count: jax.Array  # scalar: rows seen
    mean: jax.Array  # (d,)
    m2: jax.Array  # (d,) sum of squared deviations from the mean

    @classmethod
    def zeros(cls, dim: int) -> "RunningStats":
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((dim,), jnp.float32), jnp.zeros((dim,), jnp.float32))

    def update(self, rows: jax.Array, mask: jax.Array) -> "RunningStats":
        w = mask.astype(jnp.float32)[:, None]
        n = w.sum()
        batch_mean = (rows * w).sum(0) / jnp.maximum(n, 1.0)
        batch_m2 = (jnp.square(rows - batch_mean) * w).sum(0)
        total = self.count + n
        diff = batch_mean - self.mean
        safe_total = jnp.maximum(total, 1.0)
        mean = self.mean + diff * n / safe_total
        m2 = self.m2 + batch_m2 + jnp.square(diff) * self.count * n / safe_total
        return RunningStats(total, mean, m2)

    @property
    def std(self) -> jax.Array:
        # Sample standard deviation, as the reference's sqrt(s / (k - 1)).
        return jnp.sqrt(self.m2 / jnp.maximum(self.count - 1.0, 1.0))

    def normalize(self, rows: jax.Array) -> jax.Array:
        return (rows - self.mean) / (self.std + EPS)
