"""The one primitive for "does this role update on this step?" and what a gated update costs.

    g = gating.gate(step, every=k, offset=o, warmup=w)   # on when step >= w and (step - o) % k == 0

Cost rules (README "Choices worth knowing", measured in benchmarks/gated_update.md: XLA:CPU runs a network step
inside a lax.cond branch several times slower than outside one):
  every step     g.on is the Python constant True: a plain call, no conditional in the compiled program;
  warm-up        (every = 1, off only until `warmup`): the work is always done and the update is masked with
                 g.on (apply_gradients(enabled=g.on)), so every later step stays out of a conditional;
  TTUR           (every > 1): lax.cond, so the off steps skip the backward pass (what TTUR saves on
                 accelerators).
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Gate(NamedTuple):
  on: Any          # True (Python constant: every step) or a traced bool
  skip: bool       # True: the off steps skip the work (lax.cond, TTUR); False: work done, update masked


def gate(step, every: int = 1, offset: int = 0, warmup: int = 0) -> Gate:
  """On when step >= warmup and (step - offset) % every == 0."""
  every, offset, warmup = max(int(every), 1), int(offset), int(warmup)
  if every == 1 and warmup <= 0:
    return Gate(True, False)
  step = jnp.asarray(step)
  on = (step - offset) % every == 0 if every > 1 else jnp.array(True)
  if warmup > 0:
    on = jnp.logical_and(step >= warmup, on)
  return Gate(on, every > 1)


def value_and_grad(g: Gate, fn, params, *args):
  """value_and_grad(fn, has_aux=True)(params, *args) under the gate's cost rule; zeros on skipped steps."""
  vg = jax.value_and_grad(fn, has_aux=True)
  if g.on is True or not g.skip:
    return vg(params, *args)
  shapes = jax.eval_shape(vg, params, *args)

  def off(params, *args):
    del params, args
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return jax.lax.cond(g.on, vg, off, params, *args)


def update(g: Gate, on_fn, off_fn, *operands):
  """on_fn(*operands) when the gate is on, else off_fn(*operands) (same output structure), under the cost rule:
  a whole update (gradient, optimizer step, EMA) gated at once."""
  if g.on is True:
    return on_fn(*operands)
  if g.skip:
    return jax.lax.cond(g.on, on_fn, off_fn, *operands)
  return jax.tree.map(lambda a, b: jnp.where(g.on, a, b), on_fn(*operands), off_fn(*operands))


__all__ = ["Gate", "gate", "value_and_grad", "update"]
