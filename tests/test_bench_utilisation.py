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
