"""An objective's init, train_step and sample jitted with their shardings on a mesh, with compiled-step reuse."""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gendistill import _platform
from gendistill.data.spec import abstract_batch
from gendistill.sharding.memory import bytes_per_device, total_bytes
from gendistill.sharding.mesh import batch_sharding, num_batch_shards, replicated, tree_shardings, with_shardings
from gendistill.sharding.placement import put_batch, put_replicated, put_tree, to_host


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
  init_teacher: Any = None                 # the teacher init gets, if not `teacher` (teachers.with_init_network)

  def __post_init__(self):
    mesh, objective = self.mesh, self.objective
    # Shapes only (no device arrays): this also runs for deviceless (ahead-of-time) compiles.
    key = jax.eval_shape(jax.random.key, 0)
    init_with = self.teacher if self.init_teacher is None else self.init_teacher
    self._abstract = jax.eval_shape(objective.init, key, abstract_batch(self.spec), init_with)
    self.state_shardings = tree_shardings(self._abstract, mesh, self.rules)
    self.abstract_state = with_shardings(self._abstract, self.state_shardings)
    self.teacher_shardings = tree_shardings(self.teacher, mesh, self.rules, prefix="teacher")
    self._init_teacher_shardings = init_teacher_shardings = tree_shardings(init_with, mesh, self.rules,
                                                                           prefix="teacher")
    self.batch_sharding = batch_sharding(mesh)
    self.metrics_sharding = replicated(mesh)
    spec = self.spec

    def init(key_data, teacher):
      example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_batch(spec))
      return objective.init(jax.random.wrap_key_data(key_data), example, teacher)

    self._compiler_options = _platform.compiler_options(mesh)
    self._init = jax.jit(init, in_shardings=(replicated(mesh), init_teacher_shardings),
                         out_shardings=self.state_shardings, compiler_options=self._compiler_options)
    self._step = jax.jit(objective.train_step,
                         in_shardings=(self.state_shardings, self.batch_sharding, self.teacher_shardings),
                         out_shardings=(self.state_shardings, self.metrics_sharding), donate_argnums=0,
                         compiler_options=self._compiler_options)
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
    """The initial TrainState, each array created directly in its shards; `teacher`: init_teacher if given."""
    key_data = put_replicated(np.asarray(jax.random.key_data(rng)), self.mesh)
    if teacher is not None:
      teacher = put_tree(teacher, self._init_teacher_shardings)
    return self._init(key_data, teacher)

  def train_step(self, state, batch, teacher=None):
    """One step on a global batch (see put_batch); donates `state`."""
    return self._step(state, batch, teacher)

  def lower_step(self, batch_size: int):
    """The train step for global batches of `batch_size`, lowered from shapes alone (state, batch and teacher
    as ShapeDtypeStructs): the same program as train_step on real arrays."""
    example = abstract_batch(self.spec, batch_size)
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
      self._samplers[key] = jax.jit(sample, out_shardings=out, compiler_options=self._compiler_options)
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


def check_accumulation(sharded: ShardedObjective, num_microbatches: int, teacher=None):
  """Raises if num_microbatches > 1 but the objective does not declare gradient accumulation."""
  del teacher
  if num_microbatches > 1 and not sharded.objective.accumulates_gradients:
    raise ValueError(f"train.microbatches = {num_microbatches}, but the objective {sharded.objective.name!r} does "
                     "not accumulate gradients (Objective.accumulates_gradients; see "
                     "gendistill.sharding.accumulation); set train.microbatches = 1.")
