"""MEND's editor network: low-rank residual layers that start as the identity.

Each layer maps h -> h + relu((h V) U + b) with V (d, r) standard normal and
U (r, d) zeros under `init="id"`, so the untrained network is the identity. As
in the reference code, the relu is applied in every layer, the last included,
and under `init="xavier"` a layer has no residual: h -> relu((h V) U + b).
With `n_modes` (shared editors) each inner matrix served gets its own learned
scale (init 1) and shift (init 0) of the pre-activation.
"""
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def clamp_min_zero(x: jax.Array) -> jax.Array:
    """torch's `x.clamp(min=0)`: a relu whose derivative at exactly 0 is 1.

    The identity init puts every pre-activation at exactly 0 (U = 0, b = 0,
    shift 0), so the derivative there decides whether the network gets any
    meta-gradient: `jax.nn.relu`'s is 0 (the network would never leave the
    identity) and `jnp.maximum(x, 0)`'s or `jnp.clip(x, 0)`'s is 0.5. The
    reference chose clamp for exactly this reason.

    Like torch's clamp, NaN passes through (NaN < 0 is false): a NaN network must
    not act as the identity.
    """
    return jnp.where(x < 0, jnp.zeros_like(x), x)


def _xavier_uniform(gain: float):
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


class LowRankResidual(nn.Module):
    width: int
    rank: int
    init_kind: str = "id"
    n_modes: Optional[int] = None

    @nn.compact
    def __call__(self, h: jax.Array, mode: Optional[int] = None) -> jax.Array:
        r = min(self.rank, self.width)
        if self.init_kind == "id":
            v_init, u_init = nn.initializers.normal(1.0), nn.initializers.zeros
        elif self.init_kind == "xavier":
            v_init, u_init = _xavier_uniform(1.0), _xavier_uniform(math.sqrt(2.0))
        else:
            raise ValueError(f"mend.init must be 'id' or 'xavier', got {self.init_kind!r}")
        v = self.param("v", v_init, (self.width, r))
        u = self.param("u", u_init, (r, self.width))
        b = self.param("bias", nn.initializers.zeros, (self.width,))
        pre = (h @ v) @ u + b
        if self.n_modes is not None:
            scale = self.param("mode_scale", nn.initializers.ones, (self.n_modes, self.width))
            shift = self.param("mode_shift", nn.initializers.zeros, (self.n_modes, self.width))
            pre = pre * scale[mode] + shift[mode]
        act = clamp_min_zero(pre)
        return h + act if self.init_kind == "id" else act


class IDMLP(nn.Module):
    width: int
    n_hidden: int
    rank: int
    init_kind: str = "id"
    n_modes: Optional[int] = None

    @nn.compact
    def __call__(self, h: jax.Array, mode: Optional[int] = None) -> jax.Array:
        for i in range(self.n_hidden + 1):
            h = LowRankResidual(self.width, self.rank, self.init_kind, self.n_modes, name=f"layer_{i}")(h, mode)
        return h


class GradientTransform(nn.Module):
    """Maps normalised factors (u, δ) to (ũ, δ̃) with the configured variant.

    combine: one IDMLP over [u; δ]. Otherwise one network per side, where
    x_only / delta_only / one_sided leave a side untouched (one_sided transforms
    only the smaller side: δ when d_in > d_out, else u).
    """

    x_dim: int
    delta_dim: int
    combine: bool = True
    one_sided: bool = False
    x_only: bool = False
    delta_only: bool = False
    n_hidden: int = 1
    rank: int = 1920
    init_kind: str = "id"
    n_modes: Optional[int] = None

    def _net(self, width: int, name: str) -> IDMLP:
        return IDMLP(width, self.n_hidden, self.rank, self.init_kind, self.n_modes, name=name)

    @nn.compact
    def __call__(self, u: jax.Array, delta: jax.Array, mode: Optional[int] = None):
        if self.combine:
            if self.one_sided or self.x_only or self.delta_only:
                raise ValueError("mend.combine cannot be used with one_sided, x_only or delta_only")
            out = self._net(self.x_dim + self.delta_dim, "mlp")(jnp.concatenate([u, delta], -1), mode)
            return out[:, : self.x_dim], out[:, self.x_dim:]
        transform_x, transform_delta = True, True
        if self.one_sided:
            transform_x, transform_delta = self.x_dim <= self.delta_dim, self.x_dim > self.delta_dim
        elif self.x_only:
            transform_delta = False
        elif self.delta_only:
            transform_x = False
        if transform_x:
            u = self._net(self.x_dim, "mlp1")(u, mode)
        if transform_delta:
            delta = self._net(self.delta_dim, "mlp2")(delta, mode)
        return u, delta
