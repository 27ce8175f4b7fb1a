"""Every decoder family through every editor, and the memory options (remat, bf16) on every family.

Parity with transformers is in each family's own test file; here each tiny random model takes
one meta-training step of MEND, EFK and ENN and one FT edit, and rematerialisation and bf16
are checked against the plain fp32 model. CI runs MEND on every family and the rest on GPT-2
and Llama; `pytest -m slow` adds the other families' copies.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from mend_jax import config_lib, editors, experiments, losses, meta, models
from mend_jax.models.architectures import ARCHITECTURES
from mend_jax.trainer import Experiment, Trainer
from tests import tiny

DECODERS = sorted(tiny.DECODERS)
# CI checks each editor and memory option on GPT-2 and Llama (the two code paths every decoder
# family shares: learned positions and a tied head, rotary positions and grouped-query
# attention); the other families' copies of a check carry the slow marker (pytest -m slow).
CI_DECODERS = ("gpt2", "llama")


def by_family(cases):
    """`cases` as pytest params, those of families outside CI_DECODERS marked slow."""
    return [pytest.param(*c, marks=() if c[0] in CI_DECODERS or c[0] not in DECODERS else pytest.mark.slow)
            for c in cases]


def trainer_for(alg, target, params, batch, workdir):
    c = config_lib.base_config()
    c.alg = alg
    c.efk.update(cond_dim=16, lstm_hidden=8, hidden=16)  # the reference's sizes are for 768-wide models
    c.accumulate_bs = 1
    editor = editors.make_editor(c, target, params)
    data = tiny.OneBatch(batch)
    return Trainer(c, Experiment(editor, target, params, data, data, lambda m: 0.0), workdir)


def leaves_under(tree, key):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
            if key in jax.tree_util.keystr(p)}


# What each editor's first meta-step must move. MEND's U (identity init: V's gradient is
# U-weighted, so V moves only from the second step), EFK's per-matrix heads, and ENN's
# trained base at the edited matrices.
MOVES = {"mend": "['u']", "efk": "['matrices']", "enn": "['mlp']"}


@pytest.mark.parametrize("model_type, alg", [
    pytest.param(m, a, marks=() if a == "mend" or m in CI_DECODERS else pytest.mark.slow)
    for a in sorted(MOVES) for m in DECODERS])  # MEND on every family in CI
def test_one_meta_step_trains_the_editor(model_type, alg, tmp_path):
    _, params, target = tiny.tiny_decoder(model_type)
    batch = tiny.meta_batch()
    trainer = trainer_for(alg, target, params, batch, str(tmp_path))
    state = trainer.init_state()
    before = leaves_under(jax.device_get(state.params), MOVES[alg])
    assert before, f"{alg} has no parameters under {MOVES[alg]}"
    state, sums = trainer._grad_step(state, trainer.base_params, batch)
    state = trainer._apply_step(state)
    assert all(np.isfinite(float(v)) for v in jax.device_get(sums).values())
    after = leaves_under(jax.device_get(state.params), MOVES[alg])
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(moved) == len(before), f"unchanged: {sorted(set(before) - set(moved))}"


@pytest.mark.parametrize("model_type", DECODERS)
def test_fine_tuning_edits_the_inner_params(model_type):
    _, params, target = tiny.tiny_decoder(model_type)
    c = config_lib.base_config()
    c.alg = "ft"
    c.ft.max_edit_steps = 3
    editor = editors.make_editor(c, target, params)
    edit_params, stats = editor.init(jax.random.PRNGKey(0), params)
    batch = tiny.meta_batch()["edit_inner"]
    edited, _, _ = jax.jit(lambda p: editor.edit(edit_params, stats, p, batch, False))(params)
    nll = lambda p: float(target.nll(target.logits(p, batch), batch))
    assert nll(edited) < nll(params)
    for path in target.inner_paths:
        assert not np.array_equal(models.get_path(edited, path), models.get_path(params, path)), path


# ----- rematerialisation and bf16 ----------------------------------------------------------

def _seq2seq_and_encoder_models():
    return {
        "t5": transformers.T5Config(vocab_size=61, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=2,
                                    num_heads=2, decoder_start_token_id=0),
        "bart": transformers.BartConfig(vocab_size=61, d_model=16, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
                                        decoder_ffn_dim=24, max_position_embeddings=32),
        "bert": transformers.BertConfig(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=24, max_position_embeddings=32),
    }


def loss_and_grads(module, params, inputs, labels):
    def loss(p):
        logits = module.apply({"params": p}, **inputs)
        return losses.masked_nll(logits, labels, True) if logits.shape[-1] > 1 else logits.astype(jnp.float32).mean()
    return jax.jit(jax.value_and_grad(loss))(params)


def some_inputs(seq2seq: bool):
    batch = tiny.lm_batch(61, batch=2, length=8)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if seq2seq:
        inputs.update(decoder_input_ids=batch["input_ids"], decoder_attention_mask=batch["attention_mask"])
    return inputs, batch["labels"]


@pytest.mark.parametrize("model_type, policy", by_family([(m, "full") for m in DECODERS + ["t5", "bart", "bert"]]
                                                    + [("gpt2", "dots"), ("llama", "dots_no_batch")]))
def test_remat_keeps_the_parameters_gradients_and_factors(model_type, policy):
    """Rematerialisation recomputes, it does not change: same tree, same gradients, same MEND factors."""
    if model_type in tiny.DECODERS:
        module, params, target = tiny.tiny_decoder(model_type)
        paths = target.inner_paths
    else:
        module = models.build_module(_seq2seq_and_encoder_models()[model_type])
        params = models.init_params(module, jax.random.PRNGKey(0))
        paths = ()
    remat = module.clone(remat=policy)
    chex.assert_trees_all_equal_shapes(params, models.init_params(remat, jax.random.PRNGKey(0)))
    inputs, labels = some_inputs(models.api.family_of(module).is_seq2seq)
    loss, grads = loss_and_grads(module, params, inputs, labels)
    remat_loss, remat_grads = loss_and_grads(remat, params, inputs, labels)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    chex.assert_trees_all_close(remat_grads, grads, atol=1e-6, rtol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: remat.apply({"params": p}, **inputs).sum()))(params))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    if paths:
        batch = {**inputs, "labels": labels}
        factors = lambda m: jax.jit(lambda p: models.inner_factors(
            m, p, paths, lambda logits, b: losses.masked_nll(logits, b["labels"], True), batch)[2])(params)
        chex.assert_trees_all_close(factors(remat), factors(module), atol=1e-6, rtol=1e-5)


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="model.remat must be one of"):
        tiny.tiny_decoder("gpt2", remat="everything")


@pytest.mark.parametrize("model_type", by_family([(m,) for m in DECODERS]))
def test_bf16_meta_step_is_close_to_fp32(model_type):
    """model.dtype=bfloat16 computes the base model in bf16; MEND's statistics and network stay fp32."""
    batch = tiny.meta_batch()
    results = {}
    fp32_model = tiny.tiny_decoder(model_type)
    _, fp32_params, _ = fp32_model
    for dtype in (jnp.float32, jnp.bfloat16):
        _, _, target = fp32_model if dtype == jnp.float32 else tiny.tiny_decoder(model_type, dtype=dtype)
        params = models.inner_in_float32(jax.tree_util.tree_map(lambda x: x.astype(dtype), fp32_params),
                                         target.inner_paths)  # as experiments.py loads a bf16 model
        c = config_lib.apply_alg_defaults(config_lib.base_config())
        editor = editors.MEND(target, params, c.mend, edit_lr=c.edit_lr)
        edit_params, stats = editor.init(jax.random.PRNGKey(0), params)
        if dtype == jnp.bfloat16:  # every entry of ΔW lands: none is below bf16's resolution of W
            edited, _, _ = jax.jit(lambda p: editor.edit(edit_params, stats, p, batch["edit_inner"], True))(params)
            for path in target.inner_paths:
                before, after = models.get_path(params, path), models.get_path(edited, path)
                assert after.dtype == jnp.float32 and float((after != before).mean()) == 1.0, path
        coef = meta.Coefficients(edit=0.1, loc=1.0, base=0.0)
        step = jax.jit(jax.value_and_grad(lambda ep: meta.edit_and_score(
            editor, target, coef, ep, stats, params, batch, train=True), has_aux=True))
        (loss, (new_stats, _)), grads = step(edit_params)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves((grads, new_stats)))
        results[dtype] = float(loss)
    assert np.isfinite(results[jnp.bfloat16])
    np.testing.assert_allclose(results[jnp.bfloat16], results[jnp.float32], rtol=3e-2)


@pytest.mark.parametrize("model_type, dtype", [("llama", "float32"), ("gptj", "bfloat16")])
def test_the_gen_experiment_trains_an_untied_decoder_from_its_checkpoint(model_type, dtype, tmp_path):
    """The command line's path: checkpoint on disk, the [PAD] fix growing an untied head, MEND, validation;
    in bf16 the edited matrices are float32 and the rest bf16."""
    config = tiny.write_gen_experiment(str(tmp_path / "data"), model_type=model_type)
    config.max_iters, config.val_interval, config.model.dtype = 4, 2, dtype
    experiment = experiments.build(config)
    inner = set(experiment.target.inner_paths)
    for path, leaf in jax.tree_util.tree_flatten_with_path(experiment.base_params)[0]:
        path = tuple(k.key for k in path)
        assert leaf.dtype == (jnp.float32 if path in inner else jnp.dtype(dtype)), path
    head = experiment.base_params["lm_head"]["kernel"]
    assert head.shape[-1] == experiment.target.module.config.vocab_size == len(tiny.word_tokenizer(
        [f"w{i}" for i in range(40)])) + 1
    results = Trainer(config, experiment, str(tmp_path / "run")).run()
    assert results["steps_trained"] == 4
    assert np.isfinite(results["results"]["edit/acc_val"]) and np.isfinite(results["results"]["perplexity/post_val"])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_config_names_matrices_of_the_checkpoint_it_loads(name):
    """configs/*.py:ARG's inner params exist, as 2-D matrices, in the architecture of the checkpoint
    that ARG loads (its shapes only: nothing is downloaded or allocated)."""
    arch = ARCHITECTURES[name]
    module = models.build_module(arch.make_config())
    shapes = models.api.param_shapes(module)
    names = tiny.repo_config(arch.experiment).get_config(arch.arg).model.inner_params
    paths = models.inner_param_paths(module, shapes, names)
    assert len(paths) == len(names) >= 4
