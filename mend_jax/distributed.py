"""Several processes (hosts) as one job: start-up, global arrays, and reading results back.

Every process runs the same program on the same config. Each builds only the
batches its own devices hold (`global_batch`), arrays that every process holds
in full become global with `to_global`, and results come back to the host with
`to_host`. Files other than checkpoints (TensorBoard, results.json, the exported
editor) are written by process 0 alone (`is_main`); Orbax checkpoints are
written by all processes together.
"""
import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

# Environment variables that mark one process of a multi-process job.
_MULTI_PROCESS_HINTS = (
    ("SLURM_STEP_NUM_TASKS", lambda v: int(v) > 1),  # set by srun for its tasks, not by sbatch/salloc shells
    ("TPU_WORKER_HOSTNAMES", lambda v: "," in v),  # every worker of a multi-host TPU slice on GKE
    ("JAX_COORDINATOR_ADDRESS", bool),
)


def looks_multi_process(environ=os.environ) -> bool:
    """Whether the environment is one process of a multi-process job (SLURM, a TPU pod)."""
    for name, test in _MULTI_PROCESS_HINTS:
        value = environ.get(name)
        if value:
            try:
                if test(value):
                    return True
            except ValueError:
                continue
    return False


def initialize(mode: str = "auto", coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
    """Calls jax.distributed.initialize when `mode` is "on", or "auto" in a multi-process
    environment; the explicit arguments override what JAX detects. Returns whether it did."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--distributed={mode!r}: one of auto, on, off")
    explicit = coordinator_address is not None or num_processes is not None
    if mode == "off" or (mode == "auto" and not explicit and not looks_multi_process()):
        return False
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    return True


def is_main() -> bool:
    return jax.process_index() == 0


def to_global(tree: Any, shardings: Any) -> Any:
    """Host values that every process holds in full, as global arrays laid out by `shardings`
    (a tree of them, or one for every leaf). Abstract values (jax.ShapeDtypeStruct) stay
    abstract, with the sharding attached: a memory plan compiles the steps for them without
    allocating anything."""
    if isinstance(shardings, NamedSharding):
        shardings = jax.tree_util.tree_map(lambda _: shardings, tree)

    def one(value, sharding: NamedSharding):
        if isinstance(value, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
        if jax.process_count() == 1:
            return jax.device_put(value, sharding)
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(one, tree, shardings)


def global_batch(make: Callable[[int], Any], indices: Sequence[int], sharding: NamedSharding) -> Any:
    """The batches `make(i)` for i in `indices`, stacked on a leading axis laid out by `sharding`.

    Each process calls `make` only for the rows its own devices hold, so no host builds
    the whole global batch.
    """
    n = len(indices)
    rows = sorted({i for index in sharding.addressable_devices_indices_map((n,)).values()
                   for i in range(n)[index[0]]})
    local = [make(indices[i]) for i in rows]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *local)

    def one(x):
        global_shape = (n,) + x.shape[1:]
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map(one, stacked)


def to_host(tree: Any) -> Any:
    """numpy copies of (possibly sharded, possibly multi-process) arrays, the same on every process."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(one, tree)
