"""Small zsRE / NQ / FEVER files in the published formats, word tokenizers and tiny models for them."""
import json
import os

import jax
import transformers
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers, processors

from mend_jax import models
from tests.tiny import repo_config, tiny_schedule

QA_SPECIALS = {"t5": ["<pad>", "</s>", "<unk>"], "bart": ["<s>", "<pad>", "</s>", "<unk>"]}
QA_TEMPLATES = {"t5": "$A </s>", "bart": "<s> $A </s>"}
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def zsre_row(i, n_alternatives=2, n_rephrases=2, echo_input=False):
    """Row i: question 'q{i} ...', answer 'a{i}', alternatives 'n{i}_k', rephrases 'r{i}_k ...'."""
    question = f"what is q{i}"
    rephrases = [f"r{i}_{k} q{i}" for k in range(n_rephrases)]
    if echo_input:  # the published file sometimes lists the input among its own rephrases
        rephrases.insert(1, question)
    return {
        "input": question,
        "prediction": f"p{i}",
        "alternatives": [f"n{i}_{k}" for k in range(n_alternatives)],
        "filtered_rephrases": rephrases,
        "output": [{"answer": f"a{i}", "provenance": []}],
    }


def zsre_rows(n, start=0):
    return [zsre_row(i) for i in range(start, start + n)]


def nq_obj(n, start=0):
    return {"questions": [f"nq{i} who is" for i in range(start, start + n)],
            "answers": [f"na{i}" for i in range(start, start + n)]}


def fever_row(i, label="SUPPORTS", prediction=None, n_rephrases=2):
    prediction = prediction or label
    return {
        "logit": 3.0 if prediction == "SUPPORTS" else -3.0,
        "input": f"claim c{i} holds",
        "prediction": prediction,
        "alternatives": ["REFUTES" if prediction == "SUPPORTS" else "SUPPORTS"],
        "filtered_rephrases": [f"claim c{i} r{k}" for k in range(n_rephrases)],
        "output": [{"answer": label}],
        "id": f"x{i}",
    }


def fever_rows(n, start=0):
    return [fever_row(i, "SUPPORTS" if i % 2 == 0 else "REFUTES") for i in range(start, start + n)]


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def write_json(path, obj):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def write_qa_data(root, n_train=12, n_dev=6, n_nq=5):
    """root/zsre/structured_zeroshot-{train,dev}-..., root/nq/{train,validation}.json."""
    root = str(root)
    write_jsonl(os.path.join(root, "zsre", "structured_zeroshot-train-new_annotated_final.jsonl"), zsre_rows(n_train))
    write_jsonl(os.path.join(root, "zsre", "structured_zeroshot-dev-new_annotated_final.jsonl"),
                zsre_rows(n_dev, start=100))
    write_json(os.path.join(root, "nq", "train.json"), nq_obj(n_nq))
    write_json(os.path.join(root, "nq", "validation.json"), nq_obj(n_nq, start=50))
    return root


def write_fc_data(root, n_train=12, n_dev=6):
    root = str(root)
    write_jsonl(os.path.join(root, "fever", "fever-train-kilt.jsonl"), fever_rows(n_train))
    write_jsonl(os.path.join(root, "fever", "fever-dev-kilt.jsonl"), fever_rows(n_dev, start=100))
    return root


def _words(texts):
    return sorted({w for t in texts for w in t.split()})


def qa_texts(rows, nq=None):
    texts = []
    for r in rows:
        texts += [r["input"], r["prediction"], r["output"][0]["answer"], *r["alternatives"], *r["filtered_rephrases"]]
    if nq:
        texts += nq["questions"] + nq["answers"]
    return texts + [">>", "||"]


def word_tokenizer(words, specials, template=None, **roles):
    """Each word one token; `template` (e.g. "$A </s>") adds the special tokens around a text."""
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({w: len(specials) + i for i, w in enumerate(w for w in words if w not in vocab)})
    unk = next(t for t in specials if "unk" in t.lower())
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template:
        backend.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, **roles)


def qa_tokenizer(style, texts):
    specials = QA_SPECIALS[style]
    roles = {"pad_token": "<pad>", "eos_token": "</s>"}
    if style == "bart":
        roles["bos_token"] = "<s>"
    return word_tokenizer(_words(texts), specials, QA_TEMPLATES[style], **roles)


def bert_tokenizer(texts):
    return word_tokenizer(_words(texts), BERT_SPECIALS, "[CLS] $A [SEP]", pad_token="[PAD]",
                          cls_token="[CLS]", sep_token="[SEP]")


def fc_texts(rows):
    texts = []
    for r in rows:
        texts += [r["input"], *r["filtered_rephrases"], "SUPPORTS", "REFUTES", ">>", "||"]
    return texts


def tiny_t5_config(vocab, layers=2, gated=True):
    return transformers.T5Config(
        vocab_size=vocab, d_model=16, d_kv=8, d_ff=24, num_layers=layers, num_decoder_layers=layers, num_heads=2,
        feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated, dropout_rate=0.0,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )


def tiny_bart_config(vocab, layers=2):
    return transformers.BartConfig(
        vocab_size=vocab, d_model=16, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=64,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
    )


def tiny_bert_config(vocab, layers=3):
    return transformers.BertConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=1,
        architectures=["BertForSequenceClassification"], pad_token_id=0,
    )


def save_model(hf_config, tokenizer, out_dir, seed=0):
    module = models.build_module(hf_config)
    params = models.init_params(module, jax.random.PRNGKey(seed))
    models.save_pretrained(module, params, out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_qa_experiment(root, style="t5", layers=2, blocks=2):
    """A random tiny T5 or BART with a word tokenizer and zsRE/NQ files; returns a qa config."""
    root = str(root)
    data = write_qa_data(os.path.join(root, "data"))
    texts = qa_texts(zsre_rows(12) + zsre_rows(6, start=100), nq_obj(5)) + qa_texts([], nq_obj(5, start=50))
    tok = qa_tokenizer(style, texts)
    hf_config = tiny_t5_config(len(tok), layers) if style == "t5" else tiny_bart_config(len(tok), layers)
    model_dir = save_model(hf_config, tok, os.path.join(root, "model"))
    configs = repo_config("qa")
    c = configs.get_config("t5-small" if style == "t5" else "bart-base")
    c.model.name = model_dir
    c.model.inner_params = (configs.t5_inner_params(layers, n_blocks=blocks) if style == "t5"
                            else configs.bart_inner_params(n_layers=layers, n_blocks=blocks))
    c.data.path = os.path.join(data, "zsre")
    c.data.nq_path = os.path.join(data, "nq")
    c.data.max_length = 12
    c.data.target_max_length = 4
    return tiny_schedule(c, max_iters=4, val_interval=2, val_steps=3)


def write_fc_experiment(root, layers=3, blocks=3):
    root = str(root)
    data = write_fc_data(os.path.join(root, "data"))
    tok = bert_tokenizer(fc_texts(fever_rows(12) + fever_rows(6, start=100)))
    model_dir = save_model(tiny_bert_config(len(tok), layers), tok, os.path.join(root, "model"))
    configs = repo_config("fc")
    c = configs.get_config("bert-base")
    c.model.name = model_dir
    c.model.inner_params = configs.bert_inner_params(n_layers=layers, n_blocks=blocks)
    c.data.path = os.path.join(data, "fever")
    c.data.max_length = 12
    return tiny_schedule(c, max_iters=4, val_interval=2, val_steps=3)

