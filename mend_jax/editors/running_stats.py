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
        return self.merge(batch_moments(rows, mask))

    def merge(self, batch: "RunningStats") -> "RunningStats":
        """These statistics combined with those of a disjoint set of rows (Chan et al.)."""
        n = batch.count
        total = self.count + n
        diff = batch.mean - self.mean
        safe_total = jnp.maximum(total, 1.0)
        mean = self.mean + diff * n / safe_total
        m2 = self.m2 + batch.m2 + jnp.square(diff) * self.count * n / safe_total
        return RunningStats(total, mean, m2)

    @property
    def std(self) -> jax.Array:
        # Sample standard deviation, as the reference's sqrt(s / (k - 1)).
        return jnp.sqrt(self.m2 / jnp.maximum(self.count - 1.0, 1.0))

    def normalize(self, rows: jax.Array) -> jax.Array:
        return (rows - self.mean) / (self.std + EPS)


def batch_moments(rows: jax.Array, mask: jax.Array) -> RunningStats:
    """The statistics of the rows of `rows` inside `mask` alone."""
    w = mask.astype(jnp.float32)[:, None]
    n = w.sum()
    mean = (rows * w).sum(0) / jnp.maximum(n, 1.0)
    return RunningStats(n, mean, (jnp.square(rows - mean) * w).sum(0))
