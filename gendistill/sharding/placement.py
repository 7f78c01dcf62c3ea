"""Placing host values on the mesh: each process's share of the global batch, and values identical on every
process (seeds, labels, a teacher read from disk); and reading global arrays back to every host."""
import jax
import numpy as np
from jax.experimental import multihost_utils

from gendistill.sharding.mesh import batch_sharding, num_batch_shards, replicated


def put_batch(local_batch, mesh):
  """The global batch, sharded over (data, fsdp), from this process's share of it (numpy arrays).

  Processes' shares, concatenated in process order, make the global batch (as `gendistill.data` reads them).
  """
  sharding = batch_sharding(mesh)
  shards = num_batch_shards(mesh)

  def put(x):
    x = np.asarray(x)
    global_size = x.shape[0] * jax.process_count()
    if global_size % shards:
      raise ValueError(f"The global batch ({global_size}) must be divisible by the number of batch shards "
                       f"({shards} = data x fsdp).")
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, local_batch)


def _host_value(x):
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    raise TypeError("Typed PRNG keys cannot be placed from host values; pass jax.random.key_data(key).")
  return np.asarray(jax.device_get(x))


def put_tree(tree, shardings):
  """Places host values (identical on every process: numpy, or fully addressable jax arrays) with `shardings`.

  One process: jax.device_put. Several: each process builds its own shards from its copy of the value.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def put(x, s):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, s)           # already global: reshard
    value = _host_value(x)
    return jax.make_array_from_callback(value.shape, s, lambda index: value[index])
  return jax.tree.map(put, tree, shardings)


def put_replicated(tree, mesh):
  return put_tree(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def to_host(x) -> np.ndarray:
  """A global array as numpy on every process (gathers shards across processes if needed)."""
  if x is None:
    return None
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
