"""The objective contract shared by every method.

An objective is built by a pure factory

    factory(cfg, networks, spec, run) -> Objective

  cfg       its own config section (config.objective.<name>), nothing else of the run's config;
  networks  {role: gendistill.nets.Network}: the role networks it declared at registration, passed in with
            init and apply functions of the network contract (nets/denoiser.py). The launcher builds them
            from `config.network` with the one adapter `gendistill.nets.build_networks`; users and tests pass
            their own (`Network.from_module(any_flax_module)`, `Network.from_functions(init, apply)`);
  spec      the data spec (gendistill.data.DataSpec): per-sample shape, classes, batch key;
  run       the static facts of the run it may need (`RunFacts`: global batch size, number of steps,
            micro-batches, the diffusion sampler's settings).

An objective module never builds networks, never imports gendistill.nets' concrete builders and never reads
config.network/data/train/sampler. `gendistill.objectives.build(config, spec)` is the one place that turns a
run's config into those four arguments; the launcher (gendistill.train) only calls it and never branches on
the objective. The frozen teacher is never an argument of the factory: it is a pytree argument of init and
train_step, so it stays a parameter of the compiled step (never a baked-in constant).
"""
import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from gendistill.data.spec import abstract_batch
from gendistill.diffusion import samplers
from gendistill.nets.denoiser import Network, one_hot_labels


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a method provides. All functions are pure and jit-able.

  init(rng, batch, teacher) -> TrainState
  train_step(state, batch, teacher) -> (state, metrics)   # all update scheduling lives inside
  sample(state, rng, num, labels=None, steps=None) -> samples   # labels: int [num] or None
  export_role: the role whose EMA (or params) a sampler or a later distillation run uses as its network.
  apply_fn: the network apply function of export_role, with the network contract signature.
  accumulates_gradients: train_step honours RunFacts.microbatches > 1 (computes its losses' gradients with
    gendistill.sharding.accumulation.accumulate_gradients); the loop refuses micro-batching for the others.
  """
  name: str
  init: Callable
  train_step: Callable
  sample: Callable
  export_role: str
  apply_fn: Callable
  accumulates_gradients: bool = False


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """The static facts of a run an objective may need (all Python values, fixed at build time).

  batch_size: the global batch (EMA half-lives in images, warm-ups in images).
  num_steps: the run's length (curricula that span the whole run).
  microbatches: gradient accumulation over this many micro-batches (objectives with accumulates_gradients).
  sampler: the diffusion sampler's settings (`samplers.sampler_config()` keys): the `edm` sampler, and teacher
    ODE solves of DMD's regression pairs.
  """
  batch_size: int
  num_steps: int
  microbatches: int = 1
  sampler: Mapping = dataclasses.field(default_factory=lambda: samplers.sampler_config().to_dict())

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "RunFacts":
    return cls(batch_size=int(config.data.batch_size), num_steps=int(config.train.num_steps),
               microbatches=int(config.train.microbatches), sampler=config.sampler.to_dict())

  def __hash__(self):
    return hash((self.batch_size, self.num_steps, self.microbatches, tuple(sorted(self.sampler.items()))))


def batch_inputs(batch, spec):
  """(x, one-hot labels or None) from a data batch."""
  x = batch[spec.key]
  labels = one_hot_labels(batch.get("label"), spec.num_classes) if spec.num_classes else None
  return x, labels


def sample_labels(rng, num, labels, num_classes):
  """The requested integer labels, or uniformly random ones for a conditional model; one-hot."""
  if not num_classes:
    return None
  if labels is None:
    labels = jax.random.randint(rng, (num,), 0, num_classes)
  return one_hot_labels(jnp.asarray(labels), num_classes)


def example_batch(spec, batch_size=2):
  """A zero batch with the data's structure, for initialisation and shape inference."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_batch(spec, batch_size))


__all__ = ["Objective", "RunFacts", "Network", "batch_inputs", "sample_labels", "abstract_batch", "example_batch"]
