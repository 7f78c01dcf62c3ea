"""Device mesh, sharding rules, and an objective's init/step/sample jitted with their shardings.

One mesh with two axes: `data` (the batch only) and `fsdp` (the batch, and the large arrays of the TrainState
and of the teacher). The batch is split over both axes, so every device holds global_batch / num_devices
examples. Gradients are taken over the global batch inside one jitted step: no pmap, no pmean.

Rules are declared once (config `mesh.rules`), as (regex, spec) pairs matched with `re.search` against the
path of every array, e.g. `params/generator/params/backbone/enc/32x32_conv/kernel`. The same path appears under
`opt_state/generator/<chain index>/mu/...`, `ema/generator/...` and `teacher/params/...`, so one rule covers a
parameter, its optimizer moments and its EMA alike. The first matching rule wins; a spec is
  'fsdp'        the default rule below, without the size threshold;
  'replicated'  a full copy on every device;
  a tuple       one entry per dimension: None, an axis name, or a tuple of axis names (a PartitionSpec).
Arrays that match no rule take the default rule: shard the largest dimension divisible by the `fsdp` axis size
over `fsdp` (the last such dimension on a tie, i.e. output features) when the array has at least
`mesh.fsdp_min_size` elements; replicate it otherwise (biases, norms, step counters, keys).

    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
      sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh)
      teacher = sharded.put_teacher(teacher)
      state = sharded.init(jax.random.key(0), teacher)          # born sharded: jit(init, out_shardings=...)
      state, metrics = sharded.train_step(state, sharded.put_batch(local_batch), teacher)  # donates state

Multi-host: every process runs the same program; `put_batch` assembles the global batch from each process's
share (`jax.make_array_from_process_local_data`); host values that are the same on every process (seeds,
labels, a teacher read from disk) are placed with `put_replicated`/`put_tree`.

Gradient accumulation (config `train.microbatches` = k): an objective computes each loss's (value, gradients)
with `accumulate_gradients(loss_fn, params, batch, rng, *args, num_microbatches=k)` instead of
`jax.value_and_grad(loss_fn)(params, batch, rng, *args)`. To adopt it (see objectives/edm.py):
  1. read k = config.train.get('microbatches', 1) in the objective's build;
  2. draw the loss's per-example randomness (noise levels, noise, generator inputs) for the whole batch in
     train_step and put it in `batch` next to the data, so that micro-batching does not change the draws;
  3. write the loss as a mean over `batch`'s examples, with everything else (other roles' params, the
     teacher) in *args; pass a key for randomness drawn inside (dropout) as `rng`.
A train step that updates several roles calls it once per loss. The loop refuses k > 1 for an objective whose
train_step never calls it (`check_accumulation`), instead of silently ignoring the switch.
"""
import contextlib
import dataclasses
import math
import re
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from gendistill.objectives.base import example_batch

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
  cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=1)) if cfg is None else cfg
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
  rules = tuple(cfg.get("rules", ()) if cfg is not None else ())
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
  min_size = int(cfg.get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE)) if cfg is not None else DEFAULT_FSDP_MIN_SIZE
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


# ------------------------------------------------------------------------------------------------------------
# Placing host data.


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


# ------------------------------------------------------------------------------------------------------------
# Memory accounting.


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


# ------------------------------------------------------------------------------------------------------------
# Gradient accumulation: a helper every objective can use for its losses.


def constrain_batch(tree, batch_dim: int = 0):
  """Inside a jitted function under `jax.set_mesh`: shard dimension `batch_dim` of every leaf over (data, fsdp)
  when it divides evenly; a no-op without a ('data', 'fsdp') mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not all(a in mesh.axis_names for a in BATCH_AXES):
    return tree
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)

  def one(x):
    if x is None or np.ndim(x) <= batch_dim or x.shape[batch_dim] % shards:
      return x
    spec = [None] * batch_dim + [BATCH_AXES]
    return jax.lax.with_sharding_constraint(x, P(*spec))
  return jax.tree.map(one, tree)


def split_microbatches(batch, num_microbatches: int):
  """[B, ...] leaves -> [k, B / k, ...], micro-batch i holding examples i, i + k, i + 2k, ...

  Strided, so that a batch split over devices in contiguous rows gives every device an equal part of every
  micro-batch: no data moves between devices.
  """
  k = num_microbatches

  def split(x):
    b = x.shape[0]
    if b % k:
      raise ValueError(f"Batch size {b} is not divisible by {k} micro-batches.")
    return jnp.swapaxes(jnp.reshape(x, (b // k, k) + x.shape[1:]), 0, 1)
  return constrain_batch(jax.tree.map(split, batch), batch_dim=1)


_ACCUMULATION_CALLS = []    # a stack of counters, pushed by `expect_accumulation` (trace-time check only)


@contextlib.contextmanager
def expect_accumulation():
  """Counts `accumulate_gradients` calls traced inside; yields a one-element list with the count."""
  counter = [0]
  _ACCUMULATION_CALLS.append(counter)
  try:
    yield counter
  finally:
    _ACCUMULATION_CALLS.pop()


def accumulate_gradients(loss_fn, params, batch, rng, *args, num_microbatches: int = 1, has_aux: bool = False):
  """`jax.value_and_grad(loss_fn, has_aux=has_aux)(params, batch, rng, *args)`, over micro-batches.

  loss_fn(params, batch, rng, *args) -> loss or (loss, aux), where `batch` is a pytree of arrays whose leading
  axis is the example axis (None leaves allowed) and `loss` is a MEAN over its examples. With k =
  `num_microbatches` > 1 the batch is split into k strided micro-batches (`split_microbatches`), loss and
  gradients are computed one micro-batch at a time in a `lax.scan` (activation memory of B / k examples) and
  averaged: the same as the full batch, up to float rounding. aux leaves are averaged too.

  Randomness: micro-batch i gets `fold_in(rng, i)` (k = 1: `rng` itself). For an update equal to the full
  batch's, draw per-example randomness (noise levels, noise) for the whole batch BEFORE calling this and put it
  in `batch`; randomness drawn inside loss_fn (e.g. dropout masks) then differs from the full batch's only in
  its draw, not in its distribution.
  """
  for counter in _ACCUMULATION_CALLS:
    counter[0] += 1
  grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)
  k = int(num_microbatches)
  if k <= 1:
    return grad_fn(params, batch, rng, *args)
  micro = split_microbatches(batch, k)

  def body(grad_sum, i):
    mb = jax.tree.map(lambda x: x[i], micro)
    mb_rng = None if rng is None else jax.random.fold_in(rng, i)
    out, grads = grad_fn(params, mb, mb_rng, *args)
    return jax.tree.map(jnp.add, grad_sum, grads), out

  zeros = jax.tree.map(jnp.zeros_like, params)
  grad_sum, outs = jax.lax.scan(body, zeros, jnp.arange(k))
  grads = jax.tree.map(lambda g: g / k, grad_sum)
  return jax.tree.map(lambda o: jnp.mean(o, axis=0), outs), grads


# ------------------------------------------------------------------------------------------------------------
# An objective with its shardings.


@dataclasses.dataclass(eq=False)
class ShardedObjective:
  """An objective's init, train_step and sample jitted with shardings for `mesh`.

  Attributes: abstract_state (ShapeDtypeStructs carrying the target shardings: the restore target),
  state_shardings, teacher_shardings, batch_sharding, metrics_sharding.
  """
  objective: Any
  spec: Any
  mesh: jax.sharding.Mesh
  teacher: Any = None                      # only shapes are used here
  rules: Any = None                        # a `mesh` config section (rules, fsdp_min_size)

  def __post_init__(self):
    mesh, objective = self.mesh, self.objective
    # Key and example batch are made inside the trace: no eager op, so a mesh of devices that are not attached
    # (a TPU topology from jax.experimental.topologies) works too.
    self._abstract = jax.eval_shape(lambda t: objective.init(jax.random.key(0), example_batch(self.spec), t),
                                    self.teacher)
    self.state_shardings = tree_shardings(self._abstract, mesh, self.rules)
    self.abstract_state = with_shardings(self._abstract, self.state_shardings)
    self.teacher_shardings = tree_shardings(self.teacher, mesh, self.rules, prefix="teacher")
    self.batch_sharding = batch_sharding(mesh)
    self.metrics_sharding = replicated(mesh)
    spec = self.spec

    def init(key_data, teacher):
      return objective.init(jax.random.wrap_key_data(key_data), example_batch(spec), teacher)

    self._init = jax.jit(init, in_shardings=(replicated(mesh), self.teacher_shardings),
                         out_shardings=self.state_shardings)
    self._step = jax.jit(objective.train_step,
                         in_shardings=(self.state_shardings, self.batch_sharding, self.teacher_shardings),
                         out_shardings=(self.state_shardings, self.metrics_sharding), donate_argnums=0)
    self._samplers = {}

  # Placement.
  def put_batch(self, local_batch):
    return put_batch(local_batch, self.mesh)

  def put_teacher(self, teacher):
    return None if teacher is None else put_tree(teacher, self.teacher_shardings)

  def put_state(self, state):
    """Reshards a state (e.g. made under another mesh) to this mesh's shardings."""
    return put_tree(state, self.state_shardings)

  # The objective's functions.
  def init(self, rng, teacher=None):
    """The initial TrainState, each array created directly in its shards."""
    key_data = put_replicated(np.asarray(jax.random.key_data(rng)), self.mesh)
    return self._init(key_data, teacher)

  def train_step(self, state, batch, teacher=None):
    """One step on a global batch (see put_batch); donates `state`."""
    return self._step(state, batch, teacher)

  def lower_step(self, batch_size: int):
    """The train step for global batches of `batch_size`, lowered from shapes alone (state, batch and teacher
    as ShapeDtypeStructs): the same program as train_step on real arrays."""
    example = jax.eval_shape(lambda: example_batch(self.spec, batch_size))
    batch = with_shardings(example, jax.tree.map(lambda _: self.batch_sharding, example))
    teacher = None if self.teacher is None else with_shardings(self.teacher, self.teacher_shardings)
    return self._step.lower(self.abstract_state, batch, teacher)

  def use_compiled_step(self, compiled):
    """Steps with `compiled` (from compile_step of an equal ShardedObjective, e.g. train.compile_ahead) instead
    of compiling again; a call with other shapes or shardings than it was compiled for raises. The teacher's
    apply function is static pytree metadata, so arguments are re-packed into the compiled structure: the
    teacher network is the one it was compiled with (teachers.abstract of the same config)."""
    in_tree = compiled.in_tree

    def step(state, batch, teacher):
      args, kwargs = jax.tree.unflatten(in_tree, jax.tree.leaves(((state, batch, teacher), {})))
      return compiled(*args, **kwargs)
    self._step = step

  def compile_step(self, batch_size: int):
    """Compiles lower_step(batch_size). With JAX's persistent compilation cache on, a later train_step loads
    this program instead of compiling it (see train.compile_ahead)."""
    return self.lower_step(batch_size).compile()

  def sample_fn(self, num: int, steps=None):
    """jit(sample) for `num` samples: output split over the batch axes when `num` divides evenly."""
    key = (num, steps)
    if key not in self._samplers:
      objective = self.objective
      out = self.batch_sharding if num % num_batch_shards(self.mesh) == 0 else replicated(self.mesh)

      def sample(state, key_data, labels):
        return objective.sample(state, jax.random.wrap_key_data(key_data), num, labels, steps)
      self._samplers[key] = jax.jit(sample, out_shardings=out)
    return self._samplers[key]

  def sample(self, state, rng, num: int, labels=None, steps=None) -> np.ndarray:
    """`num` samples as numpy, on every process (all processes must call it)."""
    key_data = put_replicated(np.asarray(jax.random.key_data(rng)), self.mesh)
    labels = None if labels is None else put_replicated(np.asarray(labels), self.mesh)
    return to_host(self.sample_fn(num, steps)(state, key_data, labels))

  def memory(self):
    """Bytes of the TrainState: per device under these shardings, and in total (= one replica)."""
    return dict(state_bytes_per_device=bytes_per_device(self.abstract_state),
                state_bytes_total=total_bytes(self._abstract))


def check_accumulation(sharded: "ShardedObjective", num_microbatches: int, teacher=None):
  """Raises if num_microbatches > 1 but the objective's train_step does not use `accumulate_gradients`."""
  if num_microbatches <= 1:
    return
  batch = {k: jax.ShapeDtypeStruct((num_microbatches,) + v.shape[1:], v.dtype)
           for k, v in jax.eval_shape(lambda: example_batch(sharded.spec)).items()}
  with expect_accumulation() as calls:
    jax.eval_shape(sharded.objective.train_step, sharded._abstract, batch, teacher)  # pylint: disable=protected-access
  if not calls[0]:
    raise ValueError(f"train.microbatches = {num_microbatches}, but the objective {sharded.objective.name!r} does "
                     "not accumulate gradients (see gendistill.sharding.accumulate_gradients); set "
                     "train.microbatches = 1.")


__all__ = ["DATA", "FSDP", "AXES", "BATCH_AXES", "mesh_config", "make_mesh", "mesh_shape", "fsdp_spec",
           "spec_for", "tree_shardings", "batch_sharding", "replicated", "put_batch", "put_tree",
           "put_replicated", "to_host", "bytes_per_device", "total_bytes", "accumulate_gradients",
           "split_microbatches", "ShardedObjective", "check_accumulation"]
