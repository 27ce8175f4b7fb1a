"""The MEND editor against independent computations of what the reference does."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from mend_jax import config_lib
from mend_jax.editors.idmlp import IDMLP, GradientTransform, LowRankResidual, clamp_min_zero
from mend_jax.editors.mend import MEND
from mend_jax.editors.running_stats import RunningStats
from mend_jax.models import get_path, inner_factors
from tests import tiny


def mend_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = config_lib.mend_defaults()
    cfg.rank = 8
    cfg.update(overrides)
    return cfg


def jit_edit(editor):
    return jax.jit(editor.edit, static_argnames="train")


def true_grads(target, params, batch):
    def loss(p):
        return target.nll(target.logits(p, batch), batch)

    g = jax.grad(loss)(params)
    return {path: get_path(g, path) for path in target.inner_paths}


def test_identity_editor_gives_true_gradient(model):
    module, params, target = model
    editor = MEND(target, params, mend_cfg(norm=False), edit_lr=1.0)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    batch = tiny.lm_batch(61)
    edited, _, _ = jit_edit(editor)(eparams, stats, params, batch, train=False)
    for path, g in true_grads(target, params, batch).items():
        assert float(jnp.abs(g).max()) > 0
        np.testing.assert_allclose(get_path(edited, path) - get_path(params, path), g, atol=1e-6)


def test_untouched_params_are_unchanged(model):
    module, params, target = model
    editor = MEND(target, params, mend_cfg(norm=False), edit_lr=1.0)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    edited, _, _ = jit_edit(editor)(eparams, stats, params, tiny.lm_batch(61), train=False)
    chex.assert_trees_all_equal(edited["transformer"]["h"]["0"], params["transformer"]["h"]["0"])
    chex.assert_trees_all_equal(edited["transformer"]["wte"], params["transformer"]["wte"])


def sequential_welford(rows):
    """The reference's loop: first row initialises, then one Welford step per row."""
    mean, s, k = None, None, 0
    for row in rows:
        if k == 0:
            mean, s, k = row.copy(), np.zeros_like(row), 1
        else:
            k += 1
            new_mean = mean + (row - mean) / k
            s = s + (row - mean) * (row - new_mean)
            mean = new_mean
    return k, mean, np.sqrt(s / (k - 1))


def test_running_stats_equal_sequential_welford():
    rng = np.random.RandomState(0)
    rows = [rng.standard_normal((7, 5)).astype(np.float32) * 3 + 1, rng.standard_normal((4, 5)).astype(np.float32)]
    masks = [np.array([1, 1, 0, 1, 1, 0, 1], bool), np.array([1, 0, 1, 1], bool)]
    stats = RunningStats.zeros(5)
    for r, m in zip(rows, masks):
        stats = stats.update(jnp.asarray(r), jnp.asarray(m))
    k, mean, std = sequential_welford(np.concatenate([r[m] for r, m in zip(rows, masks)]))
    assert float(stats.count) == k
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, std, rtol=1e-5)


def test_all_masked_batch_leaves_stats_unchanged():
    stats = RunningStats.zeros(3).update(jnp.ones((2, 3)), jnp.array([True, True]))
    after = stats.update(jnp.full((4, 3), 9.0), jnp.zeros(4, bool))
    chex.assert_trees_all_close(after, stats)


def test_shared_statistics_follow_reference_order(model):
    """With shared editors, one statistics object sees every layer's rows, layer by layer."""
    module, params, target = model
    editor = MEND(target, params, mend_cfg(), edit_lr=1e-4)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    batch = tiny.lm_batch(61)
    _, new_stats, _ = jit_edit(editor)(eparams, stats, params, batch, train=True)
    _, _, factors = inner_factors(module, params, target.inner_paths, target.nll, batch)
    d_in = target.inner_shapes(params)[0][0]
    x_rows = []
    for path in target.inner_paths:  # c_fc matrices have shape (16, 64): layers 1 and 2
        x, d = (np.asarray(f).reshape(-1, f.shape[-1]) for f in factors[path])
        if x.shape[1] == d_in:
            keep = (x != 0).any(-1) & (d != 0).any(-1)
            x_rows.append(x[keep])
    k, mean, std = sequential_welford(np.concatenate(x_rows))
    got = new_stats[f"{d_in}x{4 * d_in}"]["x"]
    assert float(got.count) == k and k < sum(len(r) for r in x_rows) + 1
    np.testing.assert_allclose(got.mean, mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.std, std, rtol=1e-4)
    # Evaluation leaves the statistics frozen.
    _, frozen, _ = jit_edit(editor)(eparams, new_stats, params, batch, train=False)
    chex.assert_trees_all_equal(frozen, new_stats)


def test_masked_rows_change_nothing(model):
    module, params, target = model
    editor = MEND(target, params, mend_cfg(), edit_lr=1e-4)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    eparams = jax.tree_util.tree_map(lambda x: x + 0.01, eparams)  # a non-identity editor
    _, _, factors = inner_factors(module, params, target.inner_paths, target.nll, tiny.lm_batch(61))
    padded = {}
    for path, (x, d) in factors.items():
        x2 = jnp.concatenate([x.reshape(-1, x.shape[-1]), jnp.zeros((5, x.shape[-1])), jnp.ones((3, x.shape[-1]))])
        d2 = jnp.concatenate([d.reshape(-1, d.shape[-1]), jnp.ones((5, d.shape[-1])), jnp.zeros((3, d.shape[-1]))])
        padded[path] = (x2, d2)
    g1, s1 = editor.pseudo_gradients(eparams, stats, factors, train=True)
    g2, s2 = editor.pseudo_gradients(eparams, stats, padded, train=True)
    chex.assert_trees_all_close(g1, g2, atol=1e-6)
    chex.assert_trees_all_close(s1, s2, atol=1e-6)


def test_shared_editor_modes(model):
    module, params, target = model
    editor = MEND(target, params, mend_cfg(norm=False), edit_lr=1.0)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    assert sorted(eparams["nets"]) == ["16x64", "64x16"]
    assert [m for _, m in editor.assignment] == [0, 0, 1, 1]
    layer = eparams["nets"]["16x64"]["mlp"]["layer_0"]
    chex.assert_shape(layer["mode_scale"], (2, 80))
    # Give U a value so the modes matter, then change only mode 1's shift.
    layer["u"] = jnp.full_like(layer["u"], 0.05)
    _, _, factors = inner_factors(module, params, target.inner_paths, target.nll, tiny.lm_batch(61))
    before, _ = editor.pseudo_gradients(eparams, stats, factors, train=False)
    layer["mode_shift"] = layer["mode_shift"].at[1].set(0.5)
    after, _ = editor.pseudo_gradients(eparams, stats, factors, train=False)
    p_mode0, p_mode1 = target.inner_paths[0], target.inner_paths[2]
    np.testing.assert_allclose(before[p_mode0], after[p_mode0])
    assert float(jnp.abs(before[p_mode1] - after[p_mode1]).max()) > 1e-4


def test_unshared_editors_one_per_matrix(model):
    module, params, target = model
    editor = MEND(target, params, mend_cfg(shared=False), edit_lr=1e-4)
    eparams, _ = editor.init(jax.random.PRNGKey(0), params)
    assert len(eparams["nets"]) == 4
    assert "mode_scale" not in eparams["nets"]["transformer#h#1#mlp#c_fc#weight"]["mlp"]["layer_0"]


@pytest.mark.parametrize(
    "variant, nets",
    [
        (dict(combine=True), {"mlp"}),
        (dict(combine=False), {"mlp1", "mlp2"}),
        (dict(combine=False, x_only=True), {"mlp1"}),
        (dict(combine=False, delta_only=True), {"mlp2"}),
        (dict(combine=False, one_sided=True), {"mlp2"}),  # d_in 64 > d_out 16: transform δ
    ],
)
def test_variants(variant, nets):
    gt = GradientTransform(x_dim=64, delta_dim=16, rank=4, **variant)
    u, d = jnp.ones((3, 64)), jnp.ones((3, 16))
    p = gt.init(jax.random.PRNGKey(0), u, d)["params"]
    assert set(p) == nets
    p = jax.tree_util.tree_map(lambda x: x + 0.1, p)
    u2, d2 = gt.apply({"params": p}, u, d)
    chex.assert_shape([u2, d2], [(3, 64), (3, 16)])
    assert bool(jnp.all(u2 == u)) == ("mlp1" not in nets and "mlp" not in nets)
    assert bool(jnp.all(d2 == d)) == ("mlp2" not in nets and "mlp" not in nets)


def test_combine_with_one_sided_raises():
    gt = GradientTransform(x_dim=4, delta_dim=4, combine=True, one_sided=True)
    with pytest.raises(ValueError, match="combine"):
        gt.init(jax.random.PRNGKey(0), jnp.ones((1, 4)), jnp.ones((1, 4)))


def test_identity_init_and_xavier():
    u, d = jnp.ones((2, 6)) * 0.3, jnp.ones((2, 5))
    gt = GradientTransform(x_dim=6, delta_dim=5, rank=3)
    p = gt.init(jax.random.PRNGKey(0), u, d)["params"]
    u2, d2 = gt.apply({"params": p}, u, d)
    chex.assert_trees_all_close((u2, d2), (u, d))
    gx = GradientTransform(x_dim=6, delta_dim=5, rank=3, init_kind="xavier")
    px = gx.init(jax.random.PRNGKey(0), u, d)["params"]
    assert float(jnp.abs(px["mlp"]["layer_0"]["u"]).max()) > 0


def test_xavier_layers_have_no_residual():
    """The reference adds `+ x` only under init="id"; a xavier layer is relu(pre) alone."""
    h = jnp.linspace(-1.0, 1.0, 12).reshape(2, 6)
    for init_kind, expect_residual in (("id", True), ("xavier", False)):
        layer = LowRankResidual(width=6, rank=3, init_kind=init_kind)
        p = layer.init(jax.random.PRNGKey(0), h)["params"]
        p["bias"] = jnp.full_like(p["bias"], -1e3)  # every pre-activation negative: the activation is 0
        out = layer.apply({"params": p}, h)
        chex.assert_trees_all_close(out, h if expect_residual else jnp.zeros_like(h))


def test_clamp_has_torch_derivatives_at_the_kink():
    """torch's clamp(min=0) passes the gradient where x >= 0; jax.nn.relu would give 0 at 0."""
    x = jnp.array([-1.0, 0.0, 2.0])
    g = jax.grad(lambda v: clamp_min_zero(v).sum())(x)
    t = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    t.clamp(min=0).sum().backward()
    np.testing.assert_array_equal(g, t.grad.numpy())
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0])


def torch_idmlp(params, h, mode, init_kind="id"):
    """The reference's IDMLP (nn.py: LRLinear layers) in PyTorch, on our parameters
    (torch stores v as (r, d) and u as (d, r), the transposes of ours)."""
    out = torch.tensor(np.asarray(h))
    leaves = {}
    for name in sorted(params):
        p = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params[name].items()}
        leaves[name] = p
        pre = (p["u"].T @ (p["v"].T @ out.T)).T + p["bias"]
        if "mode_scale" in p:
            pre = pre * p["mode_scale"][mode] + p["mode_shift"][mode]
        acts = pre.clamp(min=0)  # "need clamp instead of relu so gradient at 0 isn't 0"
        out = acts + out if init_kind == "id" else acts
    return out, leaves


@pytest.mark.parametrize("at_init", [True, False], ids=["identity-init", "trained"])
def test_idmlp_values_and_gradients_match_the_pytorch_reference(at_init):
    net = IDMLP(width=10, n_hidden=1, rank=4, n_modes=3)
    h = jax.random.normal(jax.random.PRNGKey(1), (7, 10))
    params = net.init(jax.random.PRNGKey(0), h, 0)["params"]
    if not at_init:
        params = jax.tree_util.tree_map(
            lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape), params
        )
    weights = jax.random.normal(jax.random.PRNGKey(3), (7, 10))
    loss = lambda p: jnp.sum(weights * net.apply({"params": p}, h, 2) ** 2)
    grads = jax.grad(loss)(params)
    out, leaves = torch_idmlp(params, h, 2)
    (torch.tensor(np.asarray(weights)) * out**2).sum().backward()
    np.testing.assert_allclose(net.apply({"params": params}, h, 2), out.detach().numpy(), rtol=1e-5, atol=1e-6)
    for layer, tensors in leaves.items():
        for name, t in tensors.items():
            np.testing.assert_allclose(grads[layer][name], t.grad.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{layer}/{name}")
    if at_init:  # U = 0, b = 0, shift 0: every pre-activation is exactly 0, and still the gradient flows
        for layer in grads.values():
            assert float(jnp.abs(layer["u"]).max()) > 0 and float(jnp.abs(layer["bias"]).max()) > 0
            assert float(jnp.abs(layer["mode_shift"][2]).max()) > 0


def test_meta_gradient_reaches_the_network_at_the_identity_init(model, monkeypatch):
    """From the identity init, a meta-step's gradient of U, b and the mode shift is non-zero and
    equals that of the same network with the activation replaced by the identity map (what a
    derivative of 1 at 0 gives at that point); V's and the mode scale's are 0 (U = 0, pre = 0)."""
    from mend_jax import meta
    from mend_jax.editors import idmlp

    module, params, target = model
    editor = MEND(target, params, mend_cfg(), edit_lr=1e-4)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    batch = tiny.meta_batch()
    coef = meta.Coefficients(edit=0.1, loc=1.0)

    def nets_grad():
        objective = lambda p: meta.edit_and_score(editor, target, coef, p, stats, params, batch, train=True)[0]
        return jax.grad(objective)(eparams)["nets"]

    grads = nets_grad()
    monkeypatch.setattr(idmlp, "clamp_min_zero", lambda x: x)
    linear = nets_grad()
    chex.assert_trees_all_close(grads, linear, rtol=1e-5, atol=1e-9)
    for key, net in grads.items():
        for name, layer in net["mlp"].items():
            for leaf in ("u", "bias", "mode_shift"):
                assert float(jnp.abs(layer[leaf]).max()) > 0, (key, name, leaf)
            assert float(jnp.abs(layer["v"]).max()) == 0 and float(jnp.abs(layer["mode_scale"]).max()) == 0


def test_one_network_call_per_editor_equals_one_call_per_matrix(model):
    """pseudo_gradients runs a shared network once over the rows of every matrix it serves;
    here each matrix goes through the network alone, with its own mode and statistics."""
    module, params, target = model
    editor = MEND(target, params, mend_cfg(), edit_lr=1e-4)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    leaves, treedef = jax.tree_util.tree_flatten(eparams["nets"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    eparams["nets"] = treedef.unflatten([v + 0.05 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])
    _, _, factors = inner_factors(module, params, target.inner_paths, target.nll, tiny.lm_batch(61))
    _, stats = editor.pseudo_gradients(eparams, stats, factors, train=True)  # statistics that normalise
    grads, _ = editor.pseudo_gradients(eparams, stats, factors, train=False)
    for path, (key, mode) in zip(target.inner_paths, editor.assignment):
        x, delta = (np.asarray(f).reshape(-1, f.shape[-1]) for f in factors[path])
        rows = (x != 0).any(-1) & (delta != 0).any(-1)
        x, delta = stats[key]["x"].normalize(jnp.asarray(x)), stats[key]["delta"].normalize(jnp.asarray(delta))
        u, d = editor.nets[key].apply({"params": eparams["nets"][key]}, x, delta, mode)
        expected = np.einsum("ri,ro->io", np.asarray(u) * rows[:, None], np.asarray(d))
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(np.asarray(grads[path]), expected, rtol=1e-4, atol=1e-6)
