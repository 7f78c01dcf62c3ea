"""TrainState: every trainable thing of a run in one pytree, plus the helpers objectives share.

Roles ('denoiser', 'generator', 'fake_score', 'critic', ...) key params, optimizer states and EMAs. Optimizers
themselves are static (they live in the objective), so the state holds only arrays.
"""
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

PyTree = Any


@struct.dataclass
class TrainState:
  step: jnp.ndarray          # completed train_step calls
  rng: jax.Array             # typed key; randomness of step k is fold_in(rng, k)
  params: Mapping[str, PyTree]
  opt_state: Mapping[str, PyTree]
  ema: Mapping[str, PyTree]
  extra: Mapping[str, PyTree]
  # Per role: steps whose gradients were non-finite over the whole run (skipped, or sanitised by nan_to_num).
  skipped: Mapping[str, jnp.ndarray] = struct.field(default_factory=dict)

  def step_rng(self, *names: str):
    """Keys for this step, one per name: the same (rng, step, name) always gives the same key."""
    base = jax.random.fold_in(self.rng, self.step)
    return tuple(jax.random.fold_in(base, _stable_hash(name)) for name in names)


def _stable_hash(name: str) -> int:
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def create(rng, params: Mapping[str, PyTree], optimizers: Mapping[str, optax.GradientTransformation],
           ema_roles=(), extra=None) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      rng=rng,
      params=dict(params),
      opt_state={role: optimizers[role].init(params[role]) for role in optimizers},
      ema={role: jax.tree.map(jnp.copy, params[role]) for role in ema_roles},
      extra=dict(extra or {}),
      skipped={role: jnp.zeros((), jnp.int32) for role in optimizers},
  )


def tree_all_finite(tree) -> jnp.ndarray:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def norm_and_finite(grads: PyTree):
  """(global L2 norm, whether every entry is finite) of `grads`, from one reduction per leaf.

  The norm is finite iff every entry is, except when the sum of squares overflows (entries near 1e19 in float32):
  only then are the entries tested one by one (inside a conditional that normally does not run). Both scalars come
  out of an optimization barrier so that XLA computes them once: fused into each consumer, the test over all
  leaves was repeated in every parameter-update fusion (a program quadratic in the number of leaves).
  """
  norm = optax.tree.norm(grads)
  finite = jax.lax.cond(jnp.isfinite(norm), lambda g: jnp.array(True), tree_all_finite, grads)
  return jax.lax.optimization_barrier((norm, finite))


def apply_gradients(state: TrainState, role: str, grads: PyTree, tx: optax.GradientTransformation,
                    enabled=True):
  """One optimizer step of `role`. Non-finite gradients skip the step (params and optimizer state unchanged).

  `enabled` (a traced bool) gates the whole update, which is how TTUR/warm-up schedules switch roles on and off
  inside a jitted step without recompiling. Returns (state, metrics).
  """
  params, opt_state = state.params[role], state.opt_state[role]
  grad_norm, finite = norm_and_finite(grads)
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
  updates, new_opt_state = tx.update(safe_grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  take = jnp.logical_and(finite, enabled)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)
  state = state.replace(params={**state.params, role: keep(new_params, params)},
                        opt_state={**state.opt_state, role: keep(new_opt_state, opt_state)})
  metrics = {f"{role}/grad_norm": grad_norm,
             f"{role}/skipped_nonfinite": jnp.logical_and(enabled, ~finite).astype(jnp.float32)}
  return count_nonfinite(state, role, finite, enabled), metrics


def count_nonfinite(state: TrainState, role: str, grads_or_finite, enabled=True) -> TrainState:
  """Adds this step to `role`'s run-long count of non-finite gradients when they are not all finite.

  `grads_or_finite`: the gradients, or a bool already computed from them. Objectives that sanitise gradients
  (official SiD/Diff-Instruct nan_to_num) call this on the raw gradients first, so a NaN never goes uncounted.
  """
  if role not in state.skipped:
    return state
  finite = grads_or_finite if isinstance(grads_or_finite, jax.Array) and grads_or_finite.dtype == jnp.bool_ \
      else norm_and_finite(grads_or_finite)[1]
  bad = jnp.logical_and(enabled, ~finite).astype(jnp.int32)
  return state.replace(skipped={**state.skipped, role: state.skipped[role] + bad})


def ema_update(ema: PyTree, params: PyTree, decay) -> PyTree:
  """ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def edm_ema_decay(num_images_seen, batch_size, halflife_images, rampup_ratio=0.05):
  """EDM's EMA: half-life h = min(halflife, rampup_ratio * images seen), decay = 0.5 ** (batch / h)."""
  h = halflife_images
  if rampup_ratio is not None and rampup_ratio > 0:
    h = jnp.minimum(h, rampup_ratio * num_images_seen)
  return 0.5 ** (batch_size / jnp.maximum(h, 1e-8))


def ema_decay_fn(cfg: ml_collections.ConfigDict, batch_size: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Decay as a function of the completed step count, from an `ema` config section.

  cfg.halflife_kimg > 0 selects EDM's half-life form (with cfg.rampup_ratio); otherwise cfg.decay is constant.
  """
  if cfg.halflife_kimg > 0:
    return lambda step: edm_ema_decay((step + 1) * batch_size, batch_size, cfg.halflife_kimg * 1000,
                                      cfg.rampup_ratio)
  return lambda step: jnp.asarray(cfg.decay, jnp.float32)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """An optax optimizer from an `optimizer` config section (one per role)."""
  cfg = optimizer_config(**cfg)   # keys added since a run saved its config.json take their defaults
  if cfg.decay_steps > 0:   # counts this role's applied updates (a gated-off step does not advance it)
    lr = optax.warmup_cosine_decay_schedule(0.0 if cfg.warmup_steps > 0 else cfg.lr, cfg.lr, cfg.warmup_steps,
                                            cfg.decay_steps, end_value=cfg.lr * cfg.end_lr_ratio)
  elif cfg.warmup_steps > 0:
    lr = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
  else:
    lr = cfg.lr
  if cfg.name == "adam":
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "radam":
    opt = optax.radam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "sgd":
    opt = optax.sgd(lr, momentum=cfg.b1 or None)
  else:
    raise ValueError(f"Unknown optimizer {cfg.name!r}; expected adam, adamw, radam or sgd.")
  chain = []
  if cfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.grad_clip_value > 0:
    chain.append(optax.clip(cfg.grad_clip_value))
  return optax.chain(*chain, opt)


def optimizer_config(lr=1e-3, name="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0,
                     decay_steps=0, end_lr_ratio=0.0, grad_clip_norm=0.0,
                     grad_clip_value=0.0) -> ml_collections.ConfigDict:
  """The keys of an `optimizer` config section with their defaults.

  The learning rate warms up linearly from 0 over `warmup_steps`; with `decay_steps` > 0 it then follows a cosine
  down to lr * end_lr_ratio at update `decay_steps` (warm-up included, as in optax) and stays there.
  """
  return ml_collections.ConfigDict(dict(name=name, lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                                        warmup_steps=warmup_steps, decay_steps=decay_steps,
                                        end_lr_ratio=end_lr_ratio, grad_clip_norm=grad_clip_norm,
                                        grad_clip_value=grad_clip_value))


def ema_config(halflife_kimg=500.0, rampup_ratio=0.05, decay=0.999) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(halflife_kimg=halflife_kimg, rampup_ratio=rampup_ratio, decay=decay))
