"""Gradient accumulation over micro-batches: a helper every objective can use for its losses.

An objective that honours `RunFacts.microbatches` = k computes each loss's (value, gradients) with
`accumulate_gradients(loss_fn, params, batch, rng, *args, num_microbatches=k)` instead of
`jax.value_and_grad(loss_fn)(params, batch, rng, *args)`, and declares `Objective(accumulates_gradients=True)`.
To adopt it (see objectives/edm.py):
  1. take k = run.microbatches in the objective's factory;
  2. draw the loss's per-example randomness (noise levels, noise, generator inputs) for the whole batch in
     train_step and put it in `batch` next to the data, so that micro-batching does not change the draws;
  3. write the loss as a mean over `batch`'s examples, with everything else (other roles' params, the
     teacher) in *args; pass a key for randomness drawn inside (dropout) as `rng`.
A train step that updates several roles calls it once per loss. The loop refuses k > 1 for an objective that
does not declare it (`sharding.check_accumulation`), instead of silently ignoring the switch.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from gendistill.sharding.mesh import BATCH_AXES


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
