"""EFK (KnowledgeEditor) against independent computations: NumPy, and PyTorch's LSTM."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mend_jax import config_lib
from mend_jax.editors.conditioner import LSTMConditioner, MaskedLSTM, WeightNormDense
from mend_jax.editors.efk import EFK
from mend_jax.models import get_path
from tests import tiny


def efk_cfg():
    cfg = config_lib.efk_defaults()
    cfg.update(cond_dim=12, lstm_hidden=6, hidden=10)
    return cfg


@pytest.fixture(scope="module")
def model():
    module, params = tiny.tiny_gpt2()
    target = tiny.gpt2_target(module, params)
    editor = EFK(target, params, efk_cfg())
    eparams, stats = editor.init(jax.random.PRNGKey(1), params)
    return module, params, target, editor, eparams


def test_weight_norm_is_g_times_direction_of_v():
    layer = WeightNormDense(5)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    p = layer.init(jax.random.PRNGKey(1), x)["params"]
    v, g, b = (np.asarray(p[k], np.float64) for k in ("v", "g", "bias"))
    np.testing.assert_allclose(g, np.linalg.norm(v, axis=0), rtol=1e-6)  # starts with w = v
    p = {**p, "g": jnp.arange(1.0, 6.0)}
    w = np.arange(1.0, 6.0) * v / np.linalg.norm(v, axis=0)
    np.testing.assert_allclose(layer.apply({"params": p}, x), np.asarray(x) @ w + b, rtol=1e-5, atol=1e-6)
    scaled = {**p, "v": p["v"] * 7.3}  # only v's direction matters
    np.testing.assert_allclose(layer.apply({"params": scaled}, x), layer.apply({"params": p}, x), rtol=1e-5, atol=1e-6)


def test_bidirectional_lstm_matches_pytorch_packed_sequences():
    emb, hidden, lengths = 4, 3, [5, 2]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, emb))
    mask = (np.arange(7)[None] < np.array(lengths)[:, None]).astype(np.int32)
    fwd, bwd = MaskedLSTM(hidden), MaskedLSTM(hidden, reverse=True)
    pf = fwd.init(jax.random.PRNGKey(1), x, mask)["params"]
    pb = bwd.init(jax.random.PRNGKey(2), x, mask)["params"]
    ours = np.concatenate([fwd.apply({"params": pf}, x, mask), bwd.apply({"params": pb}, x, mask)], -1)

    lstm = torch.nn.LSTM(emb, hidden, num_layers=1, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for suffix, p in (("", pf), ("_reverse", pb)):
            for name in ("w_ih", "w_hh"):
                getattr(lstm, f"weight_{name[2:]}_l0{suffix}").copy_(torch.tensor(np.asarray(p[name]).T))
            for name in ("b_ih", "b_hh"):
                getattr(lstm, f"bias_{name[2:]}_l0{suffix}").copy_(torch.tensor(np.asarray(p[name])))
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.tensor(np.asarray(x)), torch.tensor(lengths), batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = lstm(packed)
    np.testing.assert_allclose(ours, torch.cat([h_n[0], h_n[1]], -1).numpy(), atol=1e-5)


def test_padding_does_not_change_the_condition():
    cond = LSTMConditioner(vocab_size=30, embed_dim=8, hidden=6, out_dim=5)
    ids = np.array([[3, 9, 4, 7, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 0, 0]], np.int32)
    params = cond.init(jax.random.PRNGKey(0), ids, mask)["params"]
    out = cond.apply({"params": params}, ids, mask)
    longer = np.concatenate([ids, [[5, 11, 2, 8, 1]]], 1)  # more padding, with other token ids in it
    longer[0, 4:6] = [13, 17]
    longer_mask = np.concatenate([mask, np.zeros((1, 5), np.int32)], 1)
    np.testing.assert_allclose(cond.apply({"params": params}, longer, longer_mask), out, atol=1e-6)
    changed = ids.copy()
    changed[0, 0] = 21  # a real token does change it
    assert np.abs(cond.apply({"params": params}, changed, mask) - out).max() > 1e-4


def numpy_head(p, c):
    def wn(layer, x):
        v, g, b = (np.asarray(layer[k], np.float64) for k in ("v", "g", "bias"))
        return x @ (g * v / np.linalg.norm(v, axis=0)) + b

    return wn(p["out"], np.tanh(wn(p["hidden"], c)))


def numpy_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_update_matches_numpy_formula_summed_over_edits(model):
    module, params, target, editor, eparams = model
    # Nonzero scale and spread-out heads, so that every term of the formula matters.
    eparams = jax.tree_util.tree_map(lambda x: x * 1.5, eparams)
    edits = tiny.lm_batch(61, batch=2, seed=4)
    cond = {"input_ids": edits["input_ids"][:, ::-1], "attention_mask": np.ones_like(edits["input_ids"])}
    edited, _, _ = jax.jit(editor.edit, static_argnames="train")(eparams, {}, params, {**edits, "cond": cond}, False)
    conditions = np.asarray(editor.condition(eparams, cond), np.float64)

    grad_fn = jax.jit(jax.grad(lambda p, row: target.nll(target.logits(p, row), row)))
    grads = [grad_fn(params, {k: v[i:i + 1] for k, v in edits.items()}) for i in range(2)]
    for path, name in zip(target.inner_paths, target.inner_names):
        expected = 0.0
        for i in range(2):
            grad = np.asarray(get_path(grads[i], path))
            out = numpy_head(eparams["matrices"][name.replace(".", "#")], conditions[i])
            d0, d1 = grad.shape  # GPT-2's Conv1D stores (d_in, d_out), as our kernels
            a_col, a_row, b_col, b_row, s = np.split(out, [d1, d1 + d0, 2 * d1 + d0, 2 * (d1 + d0)])
            a = np.outer(numpy_softmax(a_row), a_col)
            b = np.outer(numpy_softmax(b_row), b_col)
            expected = expected + 1.0 / (1.0 + np.exp(-s[0])) * (grad * a + b)
        delta = np.asarray(get_path(edited, path)) - np.asarray(get_path(params, path))
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(delta, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(edited["transformer"]["h"]["0"]["mlp"]["c_fc"]["kernel"],
                                  params["transformer"]["h"]["0"]["mlp"]["c_fc"]["kernel"])


@pytest.mark.parametrize("transposed", [False, True])
def test_update_and_its_gradient_match_torch_autograd_of_the_formula(transposed):
    """ΔW and the head's gradient through it (what meta-training differentiates), against
    PyTorch's autograd of the reference's broadcast formula in float64; `transposed` takes and
    gives the matrices in our kernel layout for nn.Linear, (d1, d0)."""
    from mend_jax.editors.conditioner import conditioned_update

    rng = np.random.default_rng(0)
    d0, d1 = 6, 9
    out, grad = rng.normal(size=2 * (d0 + d1) + 1), rng.normal(size=(d0, d1))
    cotangent = rng.normal(size=(d0, d1))
    layout = (lambda m: m.T) if transposed else (lambda m: m)

    def jax_update(o):
        return conditioned_update(o, jnp.asarray(layout(grad), jnp.float32), 0.7, transposed=transposed)

    got_delta = np.asarray(jax.jit(jax_update)(jnp.asarray(out, jnp.float32)))
    jax_loss = lambda o: jnp.sum(jax_update(o) * layout(cotangent))
    got = np.asarray(jax.jit(jax.grad(jax_loss))(jnp.asarray(out, jnp.float32)))
    o = torch.tensor(out, requires_grad=True)
    a_col, a_row, b_col, b_row, s = torch.split(o, [d1, d0, d1, d0, 1])
    a = torch.softmax(a_row, -1)[:, None] * a_col[None, :]
    b = torch.softmax(b_row, -1)[:, None] * b_col[None, :]
    delta = 0.7 * torch.sigmoid(s[0]) * (torch.tensor(grad) * a + b)
    (delta * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_allclose(got_delta, layout(delta.detach().numpy()), rtol=1e-5, atol=1e-6)
    assert np.abs(o.grad.numpy()).min() > 1e-4  # every entry of the head's output gets a gradient
    np.testing.assert_allclose(got, o.grad.numpy(), rtol=2e-5, atol=1e-6)


def test_conditions_on_the_edit_text_without_cond(model):
    module, params, target, editor, eparams = model
    edit = jax.jit(editor.edit, static_argnames="train")
    edits = tiny.lm_batch(61, batch=1)
    cond = {k: edits[k] for k in ("input_ids", "attention_mask")}
    a, _, _ = edit(eparams, {}, params, edits, train=False)
    b, _, _ = edit(eparams, {}, params, {**edits, "cond": cond}, train=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    with pytest.raises(ValueError, match="one condition per edit"):
        editor.edit(eparams, {}, params, {**tiny.lm_batch(61, batch=2), "cond": cond}, False)


def test_conditioner_embedding_starts_as_the_base_models(model):
    module, params, target, editor, eparams = model
    np.testing.assert_array_equal(eparams["conditioner"]["embedding"]["embedding"],
                                  params["transformer"]["wte"]["embedding"])
    assert set(jax.tree_util.tree_leaves(editor.param_labels(eparams))) == {"editor"}


def test_conditioner_embedding_row_0_is_never_trained(model):
    """The reference's nn.Embedding(padding_idx=0): token 0 (GPT-2's "!", BART's <s>) keeps the
    base model's embedding, while it still feeds the LSTM."""
    from mend_jax import meta

    module, params, target, editor, eparams = model
    batch = tiny.meta_batch()
    ids = np.array([[0, 7, 0, 12, 5, 0, 9, 3]], np.int32)  # token 0 as a real (unmasked) token
    batch["cond"] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    coef = meta.Coefficients(edit=0.1, loc=1.0)
    objective = lambda p: meta.edit_and_score(editor, target, coef, p, {}, params, batch, train=True)[0]
    grad = jax.jit(jax.grad(objective))(eparams)["conditioner"]["embedding"]["embedding"]
    assert float(jnp.abs(grad[0]).max()) == 0.0
    assert all(float(jnp.abs(grad[t]).max()) > 0 for t in (7, 12, 5, 9, 3))
    other = ids.copy()
    other[0, 0] = 21
    assert np.abs(editor.condition(eparams, batch["cond"]) - editor.condition(eparams, {**batch["cond"], "input_ids": other})).max() > 1e-6
