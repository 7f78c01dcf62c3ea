"""The objective contract shared by every method."""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from gendistill.nets.denoiser import one_hot_labels


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a method provides. All functions are pure and jit-able.

  init(rng, batch, teacher) -> TrainState
  train_step(state, batch, teacher) -> (state, metrics)   # all update scheduling lives inside
  sample(state, rng, num, labels=None, steps=None) -> samples   # labels: int [num] or None
  export_role: the role whose EMA (or params) a sampler or a later distillation run uses as its network.
  apply_fn: the network apply function of export_role, with the network contract signature.
  """
  name: str
  init: Callable
  train_step: Callable
  sample: Callable
  export_role: str
  apply_fn: Callable


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
  batch = {spec.key: jnp.zeros((batch_size,) + tuple(spec.shape), jnp.float32)}
  if spec.num_classes:
    batch["label"] = jnp.zeros((batch_size,), jnp.int32)
  return batch
