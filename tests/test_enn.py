"""ENN: the inner SGD steps and the meta-gradient through them, in float64."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import traverse_util

from mend_jax import config_lib, models
from mend_jax.editors.base import EditTarget, replace_inner
from mend_jax.editors.enn import ENN
from mend_jax.editors.train_base import TrainableBase, trainable_paths
from mend_jax.models import get_path
from tests import tiny


def enn_cfg(**overrides):
    cfg = config_lib.enn_defaults()
    cfg.update(overrides)
    return cfg


@dataclasses.dataclass(frozen=True)
class Float64Target(EditTarget):
    """The edit NLL without the float32 cast of losses.py, so that finite differences are exact."""

    def nll(self, logits, batch):
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        token = jnp.take_along_axis(logp, jnp.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
        return -(token * mask).sum() / mask.sum()


def f64_model():
    """A tiny GPT-2 computing in float64 (call inside jax.enable_x64)."""
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=32, n_embd=8, n_layer=3, n_head=2)
    module = models.build_module(cfg, dtype=jnp.float64)
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), models.init_params(module, jax.random.PRNGKey(0)))
    target = tiny.gpt2_target(module, params)
    return module, params, Float64Target(module, target.inner_paths, target.inner_names, shift_labels=True)


meta_batch = tiny.meta_batch


def test_one_step_is_sgd_with_per_matrix_lrs(model):
    module, params, target = model
    editor = ENN(target, params, enn_cfg(), edit_lr=1e-2)
    eparams, stats = editor.init(jax.random.PRNGKey(0), params)
    eparams = {"edit_lrs": jnp.arange(1.0, 5.0) * 0.1}
    batch = tiny.lm_batch(61)
    edited, _, _ = jax.jit(editor.edit, static_argnames="train")(eparams, stats, params, batch, train=False)
    grads = jax.jit(jax.grad(lambda p: target.nll(target.logits(p, batch), batch)))(params)
    for i, path in enumerate(target.inner_paths):
        expected = get_path(params, path) - 0.1 * (i + 1) * get_path(grads, path)
        np.testing.assert_allclose(get_path(edited, path), expected, atol=1e-6)
    np.testing.assert_array_equal(edited["transformer"]["wte"]["embedding"], params["transformer"]["wte"]["embedding"])


def directional_fd(f, params, direction, eps):
    plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, params, direction)
    return (f(plus) - f(minus)) / (2 * eps)


def tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def random_like(tree, seed):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def test_second_order_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        module, params, target = f64_model()
        editor = TrainableBase(ENN(target, params, enn_cfg(n_edit_steps=2), edit_lr=0.5), no_grad_layers=1)
        eparams, stats = editor.init(jax.random.PRNGKey(0), params)
        eparams = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), eparams)
        batch = meta_batch()

        def loss(p):
            # The outer edit loss after two inner steps, plus a term on the base alone (as c_base's KL).
            edited, _, _ = editor.edit(p, stats, params, batch["edit_inner"], True)
            base = editor.current_base(p, params)
            return (target.nll(target.logits(edited, batch["edit_outer"]), batch["edit_outer"])
                    + target.nll(target.logits(base, batch["loc"]), batch["loc"]))

        grad = jax.jit(jax.grad(loss))(eparams)
        direction = random_like(eparams, 2)
        fd = directional_fd(jax.jit(loss), eparams, direction, 1e-5)
        analytic = tree_dot(grad, direction)
        assert abs(float(analytic)) > 1e-3
        # Attention scores are computed in float32 even here, which limits the agreement to ~1e-6,
        # still far below the first-order gradient's error (~6% on this direction).
        np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-5)


def test_first_order_switch_drops_the_inner_gradients_derivative():
    with jax.enable_x64(True):
        module, params, target = f64_model()
        batch = meta_batch(seed=3)
        lrs = {"edit_lrs": jnp.array([0.3, 0.5, 0.7, 0.9], jnp.float64)}

        def outer_loss(editor, p):
            edited, _, _ = editor.edit(p, {}, params, batch["edit_inner"], True)
            return target.nll(target.logits(edited, batch["edit_outer"]), batch["edit_outer"])

        grads = {}
        for first_order in (False, True):
            editor = ENN(target, params, enn_cfg(n_edit_steps=2, first_order=first_order), edit_lr=0.5)
            grads[first_order] = jax.jit(jax.grad(lambda p: outer_loss(editor, p)))(lrs)["edit_lrs"]

        # By hand: W_{t+1} = W_t - α g_t with each g_t a constant, so dL/dα = -Σ_t <∇L(W_2), g_t>.
        paths = target.inner_paths
        nll_grad = lambda key: jax.jit(jax.grad(lambda p: target.nll(target.logits(p, batch[key]), batch[key])))
        edit_grad, outer_grad = nll_grad("edit_inner"), nll_grad("edit_outer")

        def sgd(p, g):
            lrs_ = lrs["edit_lrs"]
            return replace_inner(p, {path: get_path(p, path) - lrs_[i] * get_path(g, path) for i, path in enumerate(paths)})

        g0 = edit_grad(params)
        w1 = sgd(params, g0)
        g1 = edit_grad(w1)
        dl = outer_grad(sgd(w1, g1))
        manual = np.array([
            -float(jnp.vdot(get_path(dl, p), get_path(g0, p) + get_path(g1, p))) for p in paths
        ])
        np.testing.assert_allclose(np.asarray(grads[True]), manual, rtol=1e-8, atol=1e-14)
        # The second-order gradient differs: g_1 depends on α through W_1.
        assert np.max(np.abs(np.asarray(grads[False]) - manual)) > 1e-4 * np.max(np.abs(manual))


def test_no_grad_layers_trains_only_the_upper_blocks(model):
    module, params, target = model
    trained = {"/".join(p) for p in trainable_paths(params, 2)}
    assert trained and all(p.startswith("transformer/h/2/") for p in trained)
    assert len(trainable_paths(params, None)) == len(traverse_util.flatten_dict(params))
    editor = TrainableBase(ENN(target, params, enn_cfg(), 1e-2), no_grad_layers=1)
    eparams, _ = editor.init(jax.random.PRNGKey(0), params)
    assert sorted(eparams["base"]["transformer"]["h"]) == ["1", "2"]
    labels = editor.param_labels(eparams)
    assert set(jax.tree_util.tree_leaves(labels)) == {"edit_lrs", "base"}
    # The edit starts from the current (trained) base, not the original one.
    eparams["base"] = jax.tree_util.tree_map(lambda x: x + 1.0, eparams["base"])
    edited, _, _ = jax.jit(editor.edit, static_argnames="train")(eparams, {}, params, tiny.lm_batch(61), train=False)
    ln = ("transformer", "h", "2", "ln_1", "scale")
    np.testing.assert_allclose(get_path(edited, ln), get_path(params, ln) + 1.0)
    np.testing.assert_array_equal(get_path(edited, ("transformer", "h", "0", "ln_1", "scale")),
                                  get_path(params, ("transformer", "h", "0", "ln_1", "scale")))


def test_invalid_step_count_raises(model):
    module, params, target = model
    with pytest.raises(ValueError, match="n_edit_steps"):
        ENN(target, params, enn_cfg(n_edit_steps=0), 1e-2)


def test_base_gradient_is_independent_of_c_base(model):
    """The reference back-propagates l_base with weight 1; c_base only scales the logged loss/total."""
    from mend_jax import losses, meta

    module, params, target = model
    editor = TrainableBase(ENN(target, params, enn_cfg(), 1e-2))
    eparams, _ = editor.init(jax.random.PRNGKey(0), params)
    # A base that has drifted from the original, so the drift loss and its gradient are not 0.
    eparams["base"] = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), eparams["base"]
    )
    batch = meta_batch()

    @functools.partial(jax.jit, static_argnums=1)  # c_base traced: one compilation per switch setting
    def run(c_base, in_gradient=False):
        coef = meta.Coefficients(edit=0.1, loc=1.0, base=c_base, base_in_gradient=in_gradient)
        (_, (_, sums)), g = jax.value_and_grad(
            lambda p: meta.edit_and_score(editor, target, coef, p, {}, params, batch, train=True), has_aux=True
        )(eparams)
        return g, sums

    g1, s1 = run(1.0)
    g10, s10 = run(10.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, g1, g10)
    l_base = float(s1["loss/base"])
    assert l_base > 0
    np.testing.assert_allclose(float(s10["loss/total"]) - float(s1["loss/total"]), 9 * l_base, rtol=1e-5)
    # Independently: d(l_total_edit)/d(base) + d(KL(original || base))/d(base).
    loc = batch["loc"]
    original = jax.lax.stop_gradient(target.logits(params, loc))
    drift = lambda base: losses.kl_loc(original, target.logits(editor.current_base({"base": base}, params), loc),
                                       loc["attention_mask"])
    # c_base = 0 with the switch on leaves only l_total_edit in the objective.
    g_edit, _ = run(0.0, True)
    expected = jax.tree_util.tree_map(lambda a, b: a + b, g_edit["base"], jax.jit(jax.grad(drift))(eparams["base"]))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g1["base"], expected)
    # The switch puts c_base into the gradient.
    g10_paper, _ = run(10.0, True)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), g10_paper["base"], g1["base"])
    assert max(jax.tree_util.tree_leaves(diff)) > 1e-6
