"""Memory accounting: bytes per device of a tree of (sharded) arrays or ShapeDtypeStructs."""
import math

import jax
import numpy as np


def _itemsize(dtype) -> int:
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return 8   # a threefry key: two uint32
  return np.dtype(dtype).itemsize


def bytes_per_device(tree) -> int:
  """The largest number of bytes any one device holds of `tree` (jax arrays, or ShapeDtypeStructs with
  shardings; a ShapeDtypeStruct without one counts in full)."""
  per_device = {}
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    size = _itemsize(x.dtype)
    if sharding is None:
      per_device[None] = per_device.get(None, 0) + math.prod(x.shape) * size
      continue
    shard = math.prod(sharding.shard_shape(tuple(x.shape))) * size
    for d in sharding.device_set:
      per_device[d] = per_device.get(d, 0) + shard
  if None in per_device and len(per_device) > 1:
    extra = per_device.pop(None)
    per_device = {d: v + extra for d, v in per_device.items()}
  return max(per_device.values()) if per_device else 0


def total_bytes(tree) -> int:
  return sum(math.prod(x.shape) * _itemsize(x.dtype) for x in jax.tree.leaves(tree))
