"""The denoising loss, one implementation for teacher training (`edm`) and the fake scores of distillation.

L = E_sigma,n [ lambda(sigma) || D(x + sigma n; sigma) - x ||^2 ], per sample summed (EDM, SiD, DI) or averaged
(DMD2) over pixels, then averaged over the batch.
"""
import jax
import jax.numpy as jnp

from gendistill.diffusion import guidance as guidance_lib
from gendistill.diffusion import noise as noise_lib


def per_sample_sum(x):
  return jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=1)


def per_sample_mean(x):
  return jnp.mean(jnp.reshape(x, (x.shape[0], -1)), axis=1)


def finite_rows(*arrays):
  """bool [N]: the samples whose entries are all finite in every array (SiD drops the others)."""
  ok = None
  for a in arrays:
    row = jnp.all(jnp.isfinite(jnp.reshape(a, (a.shape[0], -1))), axis=1)
    ok = row if ok is None else ok & row
  return ok


def denoising_loss(apply_fn, params, x, labels, sigma, noise, weight, *, train=True, rngs=None, guidance=1.0,
                   reduction="sum", drop_nonfinite=True):
  """Per-sample weight * ||D(x + sigma n; sigma) - x||^2 on sg[x]; returns (batch mean, per-sample losses).

  reduction 'sum' sums over pixels, 'mean' averages over them. drop_nonfinite: non-finite samples contribute 0
  (the batch size stays the divisor), as SiD's fake-score loss does; teacher training keeps them (a NaN must
  show). `guidance` is a CFG scale on the network (SiD-LSG's kappa1).
  """
  x = jax.lax.stop_gradient(x)
  d = guidance_lib.guided_apply(apply_fn, params, x + noise_lib.expand(sigma, x) * noise, sigma, labels, guidance,
                                train=train, rngs=rngs)
  reduce = per_sample_sum if reduction == "sum" else per_sample_mean
  per_sample = weight * reduce((d - x) ** 2)
  if drop_nonfinite:
    per_sample = jnp.where(finite_rows(x, d), per_sample, 0.0)
  return jnp.mean(per_sample), per_sample


def edm_loss(apply_fn, params, x, labels, rng, *, noise="edm", p_mean=-1.2, p_std=1.2, sigma_data=0.5, train=True,
             guidance=1.0, drop_nonfinite=True):
  """EDM's loss of one batch (Karras et al. 2022): sigma and lambda(sigma) of the `noise` kind (edm: ln sigma ~
  N(p_mean, p_std^2), lambda = (sigma^2 + sigma_d^2)/(sigma sigma_d)^2), sum over pixels, mean over the batch.
  Returns (loss, per-sample losses)."""
  rng_sigma, rng_noise, rng_dropout = jax.random.split(rng, 3)
  sigma = noise_lib.training_sigma(noise, rng_sigma, x.shape[0], p_mean, p_std)
  n = jax.random.normal(rng_noise, x.shape, x.dtype)
  weight = noise_lib.training_noise(noise)[1](sigma, sigma_data)
  return denoising_loss(apply_fn, params, x, labels, sigma, n, weight, train=train, rngs={"dropout": rng_dropout},
                        guidance=guidance, reduction="sum", drop_nonfinite=drop_nonfinite)


__all__ = ["per_sample_sum", "per_sample_mean", "finite_rows", "denoising_loss", "edm_loss"]
