"""Where a result was computed: the CPU, the devices and the library versions.

Training amplifies rounding differences, so the same command on another CPU or with other
library versions can end with different numbers (README, "The world moves with the machine").
results.json and the world's world.json record this beside the figures.
"""
import platform
from importlib import metadata
from typing import Dict

import jax

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers", "tokenizers")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> Dict[str, object]:
    """A JSON-ready record of this process's machine and libraries."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "processes": jax.process_count(),
        "libraries": versions,
    }
