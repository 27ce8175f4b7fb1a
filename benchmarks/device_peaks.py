"""Datasheet peak matrix rates of accelerators, for the FLOP utilisation (MFU) of a benchmark row.

Peaks are dense (NVIDIA's datasheets quote tensor-core rates with 2:4 sparsity; these are
half of those), in TFLOP/s, per chip as JAX sees it (`jax.devices()[0]`), by the mode a
matrix product runs in:

- "bfloat16": bf16 inputs (TPUs also run float32 products at the default precision as one
  bf16 pass);
- "tf32": float32 inputs on NVIDIA tensor cores, what XLA:GPU does at JAX's default precision;
- "float32": float32 inputs at full precision (`jax_default_matmul_precision=highest`), on
  the CUDA cores.

A CPU has no such number here: its rows compare the step with a GEMM measured in the same run.
"""
from typing import Optional

import jax

# (a substring of device_kind, {mode: TFLOP/s}); the first match wins, so a model's variants
# (PCIe, NVL) come before its plain name (SXM). From NVIDIA's A100, H100 and H200 datasheets
# (their tensor-core figures halved: they are quoted with sparsity) and Google Cloud's TPU pages.
PEAKS = (
    ("H100 PCIe", {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.5}),
    ("H100 NVL", {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5}),
    ("H100", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5}),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200 NVL", {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5}),
    ("H200", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5}),
    ("A100", {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),  # v5e
    ("TPU v5", {"bfloat16": 459.0}),  # v5p
    ("TPU v6 lite", {"bfloat16": 918.0}),  # v6e (Trillium)
)

_FULL_PRECISION = {"highest", "float32", "F32_F32_F32"}


def matmul_mode(dtype: str, platform: str, precision: Optional[str] = None) -> str:
    """The mode ("bfloat16", "tf32" or "float32") of a `dtype` product on `platform` at
    `precision` (jax_default_matmul_precision; None: JAX's default)."""
    if dtype == "bfloat16" or precision == "bfloat16":
        return "bfloat16"
    if precision in _FULL_PRECISION:
        return "float32"
    return {"gpu": "tf32", "cuda": "tf32", "tpu": "bfloat16"}.get(platform, "float32")


def peak_tflops(device_kind: str, mode: str) -> Optional[float]:
    """The datasheet peak of one `device_kind` chip in `mode`, or None where it is not known."""
    for name, peaks in PEAKS:
        if name in device_kind:
            return peaks.get(mode)
    return None


def device_peak(dtype: str) -> tuple:
    """(mode, peak TFLOP/s or None) of this process's first device for a `dtype` model."""
    device = jax.devices()[0]
    mode = matmul_mode(dtype, device.platform, jax.config.jax_default_matmul_precision)
    return mode, peak_tflops(device.device_kind, mode)
