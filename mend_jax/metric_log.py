"""TensorBoard scalars, a JSON-lines copy of them, and the results JSON, under the
reference's metric names.

`metrics.jsonl` holds one line per logging call, {"step": s, name: value, ...},
so that curves can be read without TensorBoard (`read_metrics`). A resumed run
appends to it; `read_metrics` keeps the last line written for each step and prefix.
"""
import json
import math
import os
from typing import Any, Dict, List

from mend_jax.data.io import write_json_atomically

METRICS_JSONL = "metrics.jsonl"


class MetricLog:
    """`enabled=False`: writes nothing (the processes other than 0 of a multi-host job)."""

    def __init__(self, workdir: str, enabled: bool = True):
        from tensorboardX import SummaryWriter

        self.workdir, self.enabled = workdir, enabled
        if enabled:
            self.writer = SummaryWriter(os.path.join(workdir, "tb"))
            self.jsonl = open(os.path.join(workdir, METRICS_JSONL), "a")

    def scalars(self, step: int, metrics: Dict[str, float], suffix: str = "") -> None:
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(name + suffix, value, step)
        self.writer.flush()
        row = {"step": int(step), **{name + suffix: _json_number(v) for name, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()

    def write_results(self, results: Dict[str, Any]) -> str:
        path = os.path.join(self.workdir, "results.json")
        if not self.enabled:
            return path
        write_json_atomically(path, results, indent=2, sort_keys=True)
        return path

    def close(self) -> None:
        if not self.enabled:
            return
        self.writer.close()
        self.jsonl.close()


def _json_number(value) -> Any:
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN or Infinity


def read_metrics(workdir: str, having: str = "") -> List[Dict[str, Any]]:
    """The rows of `workdir`'s metrics.jsonl that have a key containing `having` (e.g. "_val"),
    by step, the last written row winning where a resumed run repeated a step."""
    rows: Dict[Any, Dict[str, Any]] = {}
    with open(os.path.join(workdir, METRICS_JSONL)) as f:
        for line in f:
            row = json.loads(line)
            keys = sorted(k for k in row if k != "step")
            if having and not any(having in k for k in keys):
                continue
            rows[(row["step"], keys[0] if keys else "")] = row
    return sorted(rows.values(), key=lambda r: r["step"])


def with_suffix(metrics: Dict[str, float], suffix: str) -> Dict[str, float]:
    return {k + suffix: v for k, v in metrics.items()}
