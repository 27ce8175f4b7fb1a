"""The device mesh and where every array lives on it, from the config.

`config.mesh` sizes two axes (big_vision / MaxText style): `data` spreads the
batches of an accumulation window over devices, `fsdp` shards the train state
and the base model. `config.sharding.rules` maps leaves to a strategy by
regular expression over their path (first match wins):

* ``fsdp``: shard the largest dimension that the fsdp axis divides; leaves
  smaller than `sharding.min_size` elements, or with no such dimension, are
  replicated;
* ``replicate``: a full copy on every device.

A 1 x 1 mesh leaves every array on one device, as before meshes existed.
"""
import re
from typing import Any, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
STRATEGIES = ("fsdp", "replicate")


class MeshError(ValueError):
    """A mesh or sharding rule the devices cannot satisfy; the message names the config key."""


def mesh_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(data=1, fsdp=1))


def sharding_defaults() -> ml_collections.ConfigDict:
    # Leaves below min_size elements (16 KiB in fp32) gain nothing from sharding but collectives.
    return ml_collections.ConfigDict(dict(rules=((".*", "fsdp"),), min_size=4096))


def mesh_shape(mesh_cfg, n_devices: int) -> Tuple[int, int]:
    """(data, fsdp) sizes, with one -1 resolved to the devices left over."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    for axis, size in zip(AXES, sizes):
        if size == 0 or size < -1:
            raise MeshError(f"mesh.{axis}={size}: a mesh axis is a positive size or -1 (the remaining devices)")
    if sizes.count(-1) > 1:
        raise MeshError("mesh.data and mesh.fsdp are both -1: at most one axis takes the remaining devices")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise MeshError(f"mesh: {n_devices} devices do not split into a {sizes} mesh")
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise MeshError(
            f"mesh.data={sizes[0]} x mesh.fsdp={sizes[1]} = {int(np.prod(sizes))} devices, but the job has "
            f"{n_devices}; set the sizes to multiply to {n_devices}, or one of them to -1"
        )
    return sizes[0], sizes[1]


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    if mesh_cfg is None:  # configs saved before meshes existed
        mesh_cfg = mesh_defaults()
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: XLA's partitioner propagates the layouts set here through the models, which
    # carry no sharding annotations of their own (Explicit axes would require them everywhere).
    axis_types = (AxisType.Auto,) * len(AXES)
    if len(devices) == 1:
        return Mesh(np.array(devices).reshape(shape), AXES, axis_types=axis_types)
    # jax.make_mesh orders devices so that the fsdp axis (the chattier one) stays within a host.
    return jax.make_mesh(shape, AXES, devices=devices, axis_types=axis_types)


def check_rules(rules) -> None:
    for i, rule in enumerate(rules):
        if len(rule) != 2 or rule[1] not in STRATEGIES:
            raise MeshError(f"sharding.rules[{i}]={rule!r}: a rule is (regex, one of {STRATEGIES})")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise MeshError(f"sharding.rules[{i}]: {rule[0]!r} is not a regular expression ({e})") from None


def leaf_spec(name: str, shape: Tuple[int, ...], rules, fsdp: int, min_size: int) -> P:
    """The PartitionSpec `rules` give the leaf `name` of `shape` on an fsdp axis of `fsdp` devices."""
    strategy = next((s for pattern, s in rules if re.fullmatch(pattern, name)), "replicate")
    if strategy == "replicate" or fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = [d for d in np.argsort(shape, kind="stable")[::-1] if shape[d] % fsdp == 0]
    if not dims:
        return P()
    spec = [None] * len(shape)
    spec[dims[0]] = "fsdp"
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, sharding_cfg, prefix: str = "") -> Any:
    """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs), named `prefix/path`."""
    cfg = sharding_cfg if sharding_cfg is not None else sharding_defaults()
    check_rules(cfg.rules)
    fsdp = mesh.shape["fsdp"]

    def one(path, leaf):
        name = "/".join(p for p in (prefix, jax.tree_util.keystr(path, simple=True, separator="/")) if p)
        return NamedSharding(mesh, leaf_spec(name, tuple(np.shape(leaf)), cfg.rules, fsdp, cfg.min_size))

    return jax.tree_util.tree_map_with_path(one, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def over_data(mesh: Mesh) -> NamedSharding:
    """Arrays whose leading axis holds one batch per data-parallel device."""
    return NamedSharding(mesh, P("data"))
