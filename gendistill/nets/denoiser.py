"""The network contract: a preconditioned denoiser D(x; sigma, labels) around any raw backbone F.

`Denoiser.apply(params, x, sigma, labels, train=..., rngs=...) -> D(x; sigma)`. Teacher, fake score, generator
and consistency student all use this one calling convention; objectives only ever see apply functions.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gendistill.diffusion import precond
from gendistill.diffusion.noise import expand


class Denoiser(nn.Module):
  backbone: nn.Module
  preconditioning: str = "edm"
  sigma_data: float = 0.5

  def __call__(self, x, sigma, labels=None, train: bool = False, return_features: bool = False):
    """x: [N, ...]; sigma: scalar or [N]; labels: [N, num_classes] one-hot (zeros = unconditional) or None."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    c = precond.coefficients(self.preconditioning, sigma, self.sigma_data)
    out = self.backbone(expand(c.c_in, x) * x, c.c_noise, labels, train=train, return_features=return_features)
    raw, features = out if return_features else (out, None)
    d = expand(c.c_skip, x) * x + expand(c.c_out, x) * raw.astype(jnp.float32)
    return (d, features) if return_features else d


def one_hot_labels(labels: Any, num_classes: int, drop=None):
  """Integer labels -> one-hot float vectors; `drop` (bool [N]) zeroes rows (the unconditional input)."""
  if num_classes == 0 or labels is None:
    return None
  onehot = jnp.eye(num_classes, dtype=jnp.float32)[labels]
  if drop is not None:
    onehot = jnp.where(drop[:, None], 0.0, onehot)
  return onehot


def bind_denoiser(apply_fn, params, labels=None, guidance=1.0):
  """A sampler's `denoise_fn(x, sigma)` from a network apply function, one-hot labels and a CFG scale.

  guidance = 1 (or no labels) is the plain model; otherwise D(empty) + w (D(c) - D(empty)), as one batch.
  """
  if labels is None or guidance == 1.0:
    return lambda x, sigma: apply_fn(params, x, sigma, labels)
  from gendistill.diffusion.samplers import guided  # pylint: disable=g-import-not-at-top

  both = jnp.concatenate([labels, labels])
  return guided(lambda x, sigma, drop: apply_fn(params, x, sigma, jnp.where(drop[:, None], 0.0, both)), guidance)
