"""Deterministic and stochastic samplers over the EDM ODE dx/dsigma = (x - D(x; sigma)) / sigma.

A `denoise_fn(x, sigma)` takes x [N, ...] and sigma [N] and returns D(x; sigma). Labels and guidance are
bound by the caller (see `guided`), so the samplers know nothing about networks.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from gendistill.diffusion.noise import expand

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """t_0 > ... > t_{N-1} on the rho-warped grid, then t_N = 0 (EDM Algorithm 1/2)."""
  i = jnp.arange(num_steps, dtype=jnp.float32)
  denom = max(num_steps - 1, 1)
  t = (sigma_max ** (1 / rho) + i / denom * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return jnp.concatenate([t, jnp.zeros((1,), t.dtype)])


def heun_nfe(num_steps):
  return 2 * num_steps - 1


def heun_sampler(denoise_fn: DenoiseFn, noise, rng=None, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                 s_churn=0.0, s_min=0.0, s_max=float("inf"), s_noise=1.0, second_order=True):
  """EDM Algorithm 2. `noise` ~ N(0, I) sets the start x_0 = t_0 noise; the last step is Euler (NFE 2N - 1).

  With s_churn > 0 the sampler is stochastic and needs `rng`. second_order=False gives the Euler sampler.
  """
  ts = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
  n = noise.shape[0]
  gamma_max = min(s_churn / num_steps, 2**0.5 - 1)
  if s_churn > 0 and rng is None:
    raise ValueError("heun_sampler with s_churn > 0 needs an rng.")
  rng = jax.random.key(0) if rng is None else rng

  def step(x, i):
    t_cur, t_next = ts[i], ts[i + 1]
    if s_churn > 0:
      gamma = jnp.where((t_cur >= s_min) & (t_cur <= s_max), gamma_max, 0.0)
      t_hat = t_cur * (1 + gamma)
      eps = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
      # max(): t_hat = t_cur when gamma = 0, and the rounded difference may fall below zero.
      x_hat = x + jnp.sqrt(jnp.maximum(t_hat**2 - t_cur**2, 0.0)) * s_noise * eps
    else:
      t_hat, x_hat = t_cur, x
    d = (x_hat - denoise_fn(x_hat, jnp.full((n,), t_hat))) / t_hat
    x_next = x_hat + (t_next - t_hat) * d
    if second_order:
      def correct(x_next):
        # t_next > 0 here; the max() keeps the untaken branch finite at t_next = 0.
        t_safe = jnp.maximum(t_next, 1e-20)
        d_prime = (x_next - denoise_fn(x_next, jnp.full((n,), t_safe))) / t_safe
        return x_hat + (t_next - t_hat) * 0.5 * (d + d_prime)
      x_next = jax.lax.cond(i < num_steps - 1, correct, lambda x: x, x_next)
    return x_next, None

  x0 = noise * ts[0]
  x, _ = jax.lax.scan(step, x0, jnp.arange(num_steps))
  return x


def euler_sampler(denoise_fn: DenoiseFn, noise, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """First-order sampler on the same grid (NFE N)."""
  return heun_sampler(denoise_fn, noise, num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                      second_order=False)


def guided(denoise_cond: Callable, scale) -> DenoiseFn:
  """Classifier-free guidance: D_w = D(x; empty) + w (D(x; c) - D(x; empty)).

  `denoise_cond(x, sigma, drop_labels)` evaluates the conditional (drop_labels False) or unconditional model.
  Both calls run as one batch. scale = 1 is the plain conditional model.
  """
  def fn(x, sigma):
    n = x.shape[0]
    both = denoise_cond(jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma]),
                        jnp.concatenate([jnp.zeros((n,), bool), jnp.ones((n,), bool)]))
    d_cond, d_uncond = both[:n], both[n:]
    return d_uncond + scale * (d_cond - d_uncond)
  return fn


__all__ = ["karras_sigmas", "heun_sampler", "euler_sampler", "guided", "heun_nfe", "expand"]
