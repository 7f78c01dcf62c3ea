"""The device mesh (axes data x fsdp) and the sharding rules that map every array's path to a PartitionSpec
(see gendistill/sharding/__init__.py for the rules' language)."""
import math
import re
from typing import Any, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)     # the batch dimension is split over both axes
DEFAULT_FSDP_MIN_SIZE = 2 ** 16


def mesh_config() -> ml_collections.ConfigDict:
  """The `mesh` config section."""
  return ml_collections.ConfigDict(dict(
      data=-1,               # devices along `data`; -1 = the rest
      fsdp=1,                # devices along `fsdp` (the state's large arrays are split over them); -1 = the rest
      fsdp_min_size=DEFAULT_FSDP_MIN_SIZE,   # default rule: arrays with fewer elements are replicated
      rules=(),              # ((regex, spec), ...): see gendistill/sharding.py; first match wins
  ))


# ------------------------------------------------------------------------------------------------------------
# The mesh.


def mesh_shape(cfg, num_devices: int) -> Tuple[int, int]:
  """(data, fsdp) sizes from a `mesh` config section; one of them may be -1 (the rest of the devices)."""
  sizes = [int(cfg.data), int(cfg.fsdp)]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one of data/fsdp may be -1, got data={sizes[0]}, fsdp={sizes[1]}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: axis sizes must be positive or -1, got data={sizes[0]}, fsdp={sizes[1]}.")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices are not divisible by the fixed axis size {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} = {math.prod(sizes)} devices, but there are "
                     f"{num_devices}. Use -1 for one axis to take the rest.")
  return sizes[0], sizes[1]


def make_mesh(cfg=None, devices: Optional[Sequence[Any]] = None, *, data=None, fsdp=None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp') mesh of Auto axes (Flax convolutions reject Explicit ones) over `devices` (default: all
  devices of all processes). Sizes from a `mesh` config section, or the `data`/`fsdp` keywords."""
  cfg = mesh_config() if cfg is None else cfg
  cfg = ml_collections.ConfigDict(dict(data=cfg.data if data is None else data,
                                       fsdp=cfg.fsdp if fsdp is None else fsdp))
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def num_batch_shards(mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


# ------------------------------------------------------------------------------------------------------------
# Rules.


def path_str(path) -> str:
  """'params/generator/params/backbone/layer0/kernel' from a jax tree path."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(getattr(k, "key", k)))
  return "/".join(parts)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> P:
  """The default rule: the largest dimension divisible by `fsdp_size` over `fsdp`, if the array is large."""
  shape = tuple(shape)
  if fsdp_size <= 1 or not shape or math.prod(shape) < min_size:
    return P()
  candidates = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))
  return P(*[FSDP if i == axis else None for i in range(len(shape))])


def _axis_size(mesh, entry) -> int:
  names = entry if isinstance(entry, (tuple, list)) else (entry,)
  for name in names:
    if name not in mesh.shape:
      raise ValueError(f"Unknown mesh axis {name!r} in a sharding rule; the axes are {tuple(mesh.shape)}.")
  return math.prod(mesh.shape[n] for n in names)


def resolve_spec(spec, shape, mesh, path: str = "") -> P:
  """A rule's spec ('fsdp', 'replicated' or a per-dimension tuple) -> PartitionSpec for an array of `shape`."""
  if isinstance(spec, str):
    if spec == "fsdp":
      return fsdp_spec(shape, mesh.shape[FSDP], min_size=0)
    if spec in ("replicated", "replicate"):
      return P()
    raise ValueError(f"Sharding rule for {path!r}: spec {spec!r} must be 'fsdp', 'replicated' or a tuple.")
  spec = tuple(spec)
  if len(spec) > len(shape):
    raise ValueError(f"Sharding rule for {path!r}: spec {spec} has more entries than the array's shape {shape}.")
  for dim, entry in zip(shape, spec):
    if entry is not None and dim % _axis_size(mesh, entry):
      raise ValueError(f"Sharding rule for {path!r}: dimension {dim} of shape {tuple(shape)} is not divisible by "
                       f"the {entry!r} axis size {_axis_size(mesh, entry)}.")
  return P(*[tuple(e) if isinstance(e, list) else e for e in spec])


def _rules(cfg):
  rules = tuple(cfg.rules) if cfg is not None else ()
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"mesh.rules entries are (regex, spec) pairs; got {rule!r}.")
    out.append((re.compile(rule[0]), rule[1]))
  return out


def spec_for(path: str, shape, mesh, cfg=None) -> P:
  """The PartitionSpec of the array at `path`: the first matching rule, else the default FSDP rule."""
  for pattern, spec in _rules(cfg):
    if pattern.search(path):
      return resolve_spec(spec, shape, mesh, path)
  min_size = int(cfg.fsdp_min_size) if cfg is not None else DEFAULT_FSDP_MIN_SIZE
  return fsdp_spec(shape, mesh.shape[FSDP], min_size)


def tree_shardings(tree, mesh, cfg=None, prefix: str = ""):
  """NamedShardings for every array of `tree` (arrays or ShapeDtypeStructs), by path; `prefix` + '/' + path."""
  def one(path, x):
    p = path_str(path)
    full = f"{prefix}/{p}" if prefix and p else (prefix or p)
    return NamedSharding(mesh, spec_for(full, np.shape(x), mesh, cfg))
  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs that carry their target shardings (what an orbax restore needs)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
