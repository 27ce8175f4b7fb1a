"""GGUF files of tiny random models, written the way llama.cpp's convert_hf_to_gguf.py writes them
(its tensor names, its permutation of Llama's query and key rows, GPT-2's (out, in) matrices), so
that mend-jax's GGUF reader is checked against the model the file came from."""
import numpy as np

from mend_jax.models import convert
from mend_jax.models.api import family_of

# Hugging Face model_type -> (GGUF architecture, general.name): llama.cpp files Mistral under "llama".
ARCH = {"llama": ("llama", "tiny llama"), "mistral": ("llama", "tiny mistral"), "qwen2": ("qwen2", "tiny qwen2"),
        "gpt2": ("gpt2", "tiny gpt2")}


_GPT2_CONV1D = (".attn.c_attn", ".attn.c_proj", ".mlp.c_fc", ".mlp.c_proj")


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of a query or key matrix (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(path: str, module, params, qtype=None, drop=()) -> None:
    """`module`/`params` as a GGUF file at `path`, every matrix whose rows fit its blocks stored as
    `qtype` (default F32), the rest as F32, as llama.cpp falls back;
    tensors whose GGUF name contains one of `drop` are left out (for truncated-model tests)."""
    import gguf

    qtype = gguf.GGMLQuantizationType.F32 if qtype is None else qtype
    cfg = module.config
    arch, name = ARCH[cfg.model_type]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    if arch == "gpt2":
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
        n_layers = cfg.n_layer
    else:
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
        if arch == "llama":
            writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        n_layers = cfg.num_hidden_layers
    writer.add_vocab_size(cfg.vocab_size)
    name_map = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), n_layers)
    state = convert.params_to_state_dict(family_of(module), params)
    for hf_name, value in sorted(state.items()):
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = "output" if hf_name == "lm_head.weight" else name_map.get_name(base)
        if gguf_name is None or any(d in gguf_name for d in drop):
            continue
        value = np.asarray(value, np.float32)
        if arch == "llama" and base.endswith(("q_proj", "k_proj")):
            value = _permute(value, cfg.num_attention_heads if "q_proj" in base else cfg.num_key_value_heads)
        if arch == "gpt2" and suffix == "weight" and base.endswith(_GPT2_CONV1D):
            value = value.T  # Conv1D (in, out) -> llama.cpp's (out, in)
        value = np.ascontiguousarray(value)
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if value.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32 and value.shape[-1] % block == 0:
            writer.add_tensor(f"{gguf_name}.{suffix}", gguf.quants.quantize(value, qtype),
                              raw_dtype=qtype)
        else:
            writer.add_tensor(f"{gguf_name}.{suffix}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
