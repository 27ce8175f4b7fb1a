"""Helpers that compare a Flax model with its `transformers` PyTorch twin.

Each family's test builds a tiny random PyTorch model, saves it with
`save_pretrained`, loads it through `mend_jax.models.load_pretrained` (the same
path a real checkpoint takes) and calls these.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from mend_jax import losses
from mend_jax.models import get_path, inner_factors, inner_param_paths, load_pretrained, save_pretrained
from mend_jax.models.api import family_of

LOGIT_ATOL = 1e-4
GRAD_ATOL = 1e-5


def save_and_load(pt_model, directory, **save_kwargs):
    pt_model.save_pretrained(directory, **save_kwargs)
    return load_pretrained(directory)


def random_pretrained(pt_class, hf_config, directory, seed=0):
    """(PyTorch model, Flax module, params): a random `pt_class` with every weight moved off its
    initial value (non-trivial biases and norms), loaded through the real loading path."""
    torch.manual_seed(seed)
    pt = pt_class(hf_config).eval()
    with torch.no_grad():
        for p in pt.parameters():
            p.add_(0.02 * torch.randn_like(p))
    module, params = save_and_load(pt, directory)
    return pt, module, params


def check_causal_lm(pt_model, module, params, vocab, names, directory):
    """A decoder's logits with right padding, its inner-param gradients and MEND factors on a
    loss over the later tokens, and its save_pretrained round trip, all against PyTorch."""
    ids, mask = padded_batch(vocab)
    assert_logits_match(pt_model, module, params, {"input_ids": ids, "attention_mask": mask}, valid=mask)
    ids, mask = padded_batch(vocab, seed=1)
    labels = np.where(mask > 0, ids, losses.IGNORE)
    labels[:, :3] = losses.IGNORE
    check_gradients_and_factors(
        pt_model, module, params, {"input_ids": ids, "attention_mask": mask}, labels, names, shift=True
    )
    ids, mask = padded_batch(vocab, seed=2)
    check_round_trip(type(pt_model), module, perturb_params(params), {"input_ids": ids, "attention_mask": mask},
                     directory, mask)


def padded_batch(vocab, batch=3, length=9, seed=0, min_id=3):
    """Right-padded ids and mask; row i has i*2 pad positions."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(min_id, vocab, (batch, length))
    mask = np.ones_like(ids)
    for i in range(batch):
        if i:
            mask[i, length - 2 * i:] = 0
    return ids, mask


def to_torch(arrays):
    return {k: torch.tensor(np.asarray(v)) for k, v in arrays.items()}


def torch_logits(pt_model, inputs):
    with torch.no_grad():
        out = pt_model(**to_torch(inputs))
    return out.logits.numpy()


def flax_logits(module, params, inputs):
    return np.asarray(module.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()}))


def assert_logits_match(pt_model, module, params, inputs, valid=None, atol=LOGIT_ATOL):
    ref, got = torch_logits(pt_model, inputs), flax_logits(module, params, inputs)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    if valid is not None:
        ref, got = ref[valid.astype(bool)], got[valid.astype(bool)]
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)


def torch_inner_grads(pt_model, inputs, labels, names, shift):
    """Gradients of the masked NLL in PyTorch, in PyTorch layout."""
    pt_model.zero_grad()
    logits = pt_model(**to_torch(inputs)).logits
    labels = torch.tensor(labels)
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=losses.IGNORE
    )
    loss.backward()
    named = dict(pt_model.named_parameters())
    return loss.item(), {n: named[n].grad.numpy().copy() for n in names}


def flax_grad_in_torch_layout(module, grad):
    return np.asarray(grad) if family_of(module).conv1d_kernels else np.asarray(grad).T


def check_gradients_and_factors(pt_model, module, params, inputs, labels, names, shift):
    """Inner-param gradients match PyTorch, and Σ_rows x ⊗ δ equals them."""
    ref_loss, ref_grads = torch_inner_grads(pt_model, inputs, labels, names, shift)
    assert_flax_gradients_and_factors(module, params, inputs, labels, names, shift, ref_loss, ref_grads)


def check_round_trip(pt_class, module, params, inputs, directory, valid=None):
    """save_pretrained output loads in `transformers` with equal logits."""
    save_pretrained(module, params, directory)
    assert os.path.exists(os.path.join(directory, "model.safetensors"))
    reloaded = pt_class.from_pretrained(directory).eval()
    assert_logits_match(reloaded, module, params, inputs, valid)


def perturb_params(params, seed=1, scale=0.02):
    """Random non-zero biases etc., so parity is not helped by zero-initialised leaves."""
    flat = traverse_util.flatten_dict(params)
    rng = np.random.RandomState(seed)
    out = {k: v + scale * rng.standard_normal(v.shape).astype(np.float32) for k, v in flat.items()}
    return traverse_util.unflatten_dict(out)


def torch_binary_inner_grads(pt_model, inputs, labels, names):
    """Gradients of the single-logit classifier's mean -logsigmoid(±logit), in PyTorch layout."""
    pt_model.zero_grad()
    logits = pt_model(**to_torch(inputs)).logits.reshape(-1)
    sign = torch.tensor(np.where(np.asarray(labels) > 0, 1.0, -1.0), dtype=logits.dtype)
    loss = -torch.nn.functional.logsigmoid(sign * logits).mean()
    loss.backward()
    named = dict(pt_model.named_parameters())
    return loss.item(), {n: named[n].grad.numpy().copy() for n in names}


def assert_flax_gradients_and_factors(module, params, inputs, labels, names, shift, ref_loss, ref_grads):
    """The Flax half of `check_gradients_and_factors`, against given PyTorch results.

    `losses.masked_nll` picks the binary loss itself for (batch, 1) logits and 1-D labels.
    """
    paths = inner_param_paths(module, params, names)
    jinputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    jlabels = jnp.asarray(labels)
    loss_fn = lambda logits: losses.masked_nll(logits, jlabels, shift)
    # Jitted: one compilation is cheaper than dispatching every op of two backward passes.
    loss, grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(module.apply({"params": p}, **jinputs))))(params)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    loss_f, _, factors = jax.jit(
        lambda p: inner_factors(module, p, paths, lambda logits, b: loss_fn(logits), jinputs)
    )(params)
    np.testing.assert_allclose(float(loss_f), ref_loss, rtol=1e-5)
    for name, path in zip(names, paths):
        g = get_path(grads, path)
        np.testing.assert_allclose(flax_grad_in_torch_layout(module, g), ref_grads[name], atol=GRAD_ATOL)
        x, delta = factors[path]
        outer = jnp.einsum("...i,...o->io", x, delta)
        assert outer.shape == g.shape
        np.testing.assert_allclose(np.asarray(outer), np.asarray(g), atol=GRAD_ATOL)


def check_binary_gradients_and_factors(pt_model, module, params, inputs, labels, names):
    """Like `check_gradients_and_factors`, for a one-logit classifier with 0/1 labels."""
    ref_loss, ref_grads = torch_binary_inner_grads(pt_model, inputs, labels, names)
    assert_flax_gradients_and_factors(module, params, inputs, labels, names, False, ref_loss, ref_grads)
