"""TensorBoard scalars and the results JSON, under the reference's metric names."""
import json
import os
from typing import Any, Dict


class MetricLog:
    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.workdir = workdir
        self.writer = SummaryWriter(os.path.join(workdir, "tb"))

    def scalars(self, step: int, metrics: Dict[str, float], suffix: str = "") -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name + suffix, value, step)
        self.writer.flush()

    def write_results(self, results: Dict[str, Any]) -> str:
        path = os.path.join(self.workdir, "results.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        self.writer.close()


def with_suffix(metrics: Dict[str, float], suffix: str) -> Dict[str, float]:
    return {k + suffix: v for k, v in metrics.items()}
