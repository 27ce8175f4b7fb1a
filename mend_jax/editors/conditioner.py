"""KnowledgeEditor's networks: the text conditioner and the per-matrix heads.

Initialisations follow PyTorch's defaults, which the reference uses: nn.Linear
and nn.LSTM draw weights and biases from U(−1/√fan, 1/√fan) (fan_in for
Linear, hidden size for LSTM), and weight_norm starts with g = ‖v‖ so that the
initial weight equals v.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

PADDING_IDX = 0  # the conditioner embedding's padding_idx in the reference


def torch_uniform(fan: int):
    bound = 1.0 / float(fan) ** 0.5
    return lambda rng, shape, dtype=jnp.float32: jax.random.uniform(rng, shape, dtype, -bound, bound)


class TorchDense(nn.Module):
    """Dense layer with nn.Linear's initialisation; kernel (d_in, d_out)."""

    features: int

    @nn.compact
    def __call__(self, x):
        init = torch_uniform(x.shape[-1])
        kernel = self.param("kernel", init, (x.shape[-1], self.features))
        return x @ kernel + self.param("bias", init, (self.features,))


class WeightNormDense(nn.Module):
    """torch.nn.utils.weight_norm(nn.Linear): w = g · v / ‖v‖, one norm per output unit.

    v is (d_in, d_out), so each output's norm runs over axis 0 (PyTorch's dim=0
    on its (d_out, d_in) weight).
    """

    features: int

    @nn.compact
    def __call__(self, x):
        init = torch_uniform(x.shape[-1])
        v = self.param("v", init, (x.shape[-1], self.features))
        g = self.param("g", lambda _, v0: jnp.linalg.norm(v0, axis=0), v)
        bias = self.param("bias", init, (self.features,))
        # x (v diag(s)) as (x v) diag(s): the scaled weight (512 x 7681 for one head of a
        # 768 x 3072 matrix) is never written, and XLA:CPU took 10 ms per head to write it.
        return (x @ v) * (g / jnp.linalg.norm(v, axis=0)) + bias


class MaskedLSTM(nn.Module):
    """One direction of a one-layer LSTM (PyTorch's gate order i, f, g, o).

    Masked positions leave the state untouched, so the returned final hidden
    state is the one after the last real token (the first, with reverse=True),
    whatever the padding: what pack_padded_sequence gives the reference.
    """

    hidden: int
    reverse: bool = False

    @nn.compact
    def __call__(self, x, mask):
        init = torch_uniform(self.hidden)
        w_ih = self.param("w_ih", init, (x.shape[-1], 4 * self.hidden))
        w_hh = self.param("w_hh", init, (self.hidden, 4 * self.hidden))
        bias = self.param("b_ih", init, (4 * self.hidden,)) + self.param("b_hh", init, (4 * self.hidden,))
        inputs = x @ w_ih + bias  # the input projection of every position at once

        def step(carry, inp):
            h, c = carry
            z, real = inp
            i, f, g, o = jnp.split(z + h @ w_hh, 4, axis=-1)
            c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
            real = real[:, None]
            return (jnp.where(real, h_new, h), jnp.where(real, c_new, c)), None

        zeros = jnp.zeros((x.shape[0], self.hidden), inputs.dtype)
        seq = (jnp.swapaxes(inputs, 0, 1), jnp.swapaxes(mask, 0, 1) > 0)
        (h, _), _ = jax.lax.scan(step, (zeros, zeros), seq, reverse=self.reverse)
        return h


class LSTMConditioner(nn.Module):
    """Token ids (B, T) and mask -> condition vectors (B, out_dim).

    Embedding (initialised from the base model's by the editor), a one-layer
    bidirectional LSTM whose two final states are concatenated, then tanh(dense).
    """

    vocab_size: int
    embed_dim: int
    hidden: int
    out_dim: int

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        x = nn.Embed(self.vocab_size, self.embed_dim, name="embedding")(input_ids)
        # The reference's nn.Embedding(padding_idx=0): row 0 keeps its initial value (the base
        # model's embedding of token 0, e.g. BART's <s>) and is never trained.
        x = jnp.where((input_ids == PADDING_IDX)[..., None], jax.lax.stop_gradient(x), x)
        forward = MaskedLSTM(self.hidden, name="forward")(x, attention_mask)
        backward = MaskedLSTM(self.hidden, reverse=True, name="backward")(x, attention_mask)
        return jnp.tanh(TorchDense(self.out_dim, name="out")(jnp.concatenate([forward, backward], -1)))


class MatrixConditioner(nn.Module):
    """Condition -> the 2(d0 + d1) + 1 numbers that shape one matrix's update."""

    d0: int
    d1: int
    hidden: int

    @nn.compact
    def __call__(self, condition):
        h = jnp.tanh(WeightNormDense(self.hidden, name="hidden")(condition))
        return WeightNormDense(2 * (self.d0 + self.d1) + 1, name="out")(h)


def conditioned_update(out: jax.Array, grad: jax.Array, max_scale: float, transposed: bool = False) -> jax.Array:
    """ΔW = max_scale · sigmoid(s) · (∇W ⊙ a + b) for a (d0, d1) gradient.

    `out` splits into a_col (d1), a_row (d0), b_col (d1), b_row (d0), s, and
    a = softmax(a_row)ᵀ ⊗ a_col, b = softmax(b_row)ᵀ ⊗ b_col. With `transposed`, `grad` is
    ∇Wᵀ (d1, d0) and so is the result, entry for entry the same numbers: the formula runs in
    the layout the gradient has, without reading it across rows.
    """
    d0, d1 = grad.shape[::-1] if transposed else grad.shape
    a_col, a_row, b_col, b_row, s = jnp.split(out, [d1, d1 + d0, 2 * d1 + d0, 2 * (d1 + d0)])
    # Outer products as einsums: their gradients in a_row, a_col, b_row, b_col are then
    # matrix-vector products, which XLA:CPU runs at memory speed. Written as broadcast
    # products, the gradients are row and column sums of the matrix, 7x slower on one core
    # (35.6 against 4.8 ms for one 768 x 3072 matrix), most of EFK's step.
    outer = "i,j->ji" if transposed else "i,j->ij"
    a = jnp.einsum(outer, jax.nn.softmax(a_row), a_col)
    b = jnp.einsum(outer, jax.nn.softmax(b_row), b_col)
    return max_scale * jax.nn.sigmoid(s[0]) * (grad * a + b)
