"""Deterministic and stochastic samplers over the EDM ODE dx/dsigma = (x - D(x; sigma)) / sigma.

A `denoise_fn(x, sigma)` takes x [N, ...] and sigma [N] and returns D(x; sigma). Labels and guidance are
bound by the caller (see gendistill.diffusion.guidance), so the samplers know nothing about networks.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from gendistill.diffusion.noise import expand

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def sampler_config() -> ml_collections.ConfigDict:
  """The `sampler` config section: Heun/Euler sampling with a diffusion model (EDM Algorithm 2), also the
  teacher's ODE solver in distillation."""
  return ml_collections.ConfigDict(dict(
      num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
      s_churn=0.0, s_min=0.0, s_max=float("inf"), s_noise=1.0, guidance=1.0))


def karras_sigma(u, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """The rho-warped noise level at position u in [0, 1] of the Karras grid: u = 0 gives sigma_max, u = 1
  sigma_min. The one place of the formula: u may be a Python float (static levels), a traced array (curricula,
  SiD's uniform draw) or a grid of positions."""
  hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
  return (hi + u * (lo - hi)) ** rho


def karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """t_0 > ... > t_{N-1} on the rho-warped grid, then t_N = 0 (EDM Algorithm 1/2), in the default float
  precision (float64 when jax_enable_x64 is on)."""
  i = jnp.arange(num_steps, dtype=float)
  t = karras_sigma(i / max(num_steps - 1, 1), sigma_min, sigma_max, rho)
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


__all__ = ["sampler_config", "karras_sigma", "karras_sigmas", "heun_sampler", "euler_sampler", "heun_nfe", "expand"]


# ------------------------------------------------------------------------------------------------------------
# Few-step samplers of distilled students (consistency models, progressive distillation).


def consistency_sampler(consistency_fn: DenoiseFn, noise, sigmas, rng=None, renoise_min=0.0):
  """Multistep consistency sampling: x = sigmas[0] noise, x0 = f(x, sigmas[0]); then for each later s,
  x = x0 + sqrt(s^2 - renoise_min^2) z with fresh z, x0 = f(x, s). Returns x0.

  `sigmas` (static, decreasing) are the noise levels of the steps; one entry is one-step generation.
  renoise_min = sigma_min re-noises onto the consistency model's trajectory start (Song et al. 2023); ECT's
  sampler uses 0 (x0 + s z).
  """
  sigmas = [float(s) for s in sigmas]
  if not sigmas:
    raise ValueError("consistency_sampler needs at least one noise level.")
  if len(sigmas) > 1 and rng is None:
    raise ValueError("consistency_sampler with more than one step needs an rng.")
  n = noise.shape[0]
  x0 = consistency_fn(sigmas[0] * noise, jnp.full((n,), sigmas[0]))
  for k, s in enumerate(sigmas[1:]):
    z = jax.random.normal(jax.random.fold_in(rng, k), noise.shape, noise.dtype)
    x = x0 + max(s**2 - renoise_min**2, 0.0) ** 0.5 * z
    x0 = consistency_fn(x, jnp.full((n,), s))
  return x0


def cosine_logsnr(u, logsnr_min=-20.0, logsnr_max=20.0):
  """Cosine log-SNR schedule lambda(u) = -2 ln tan(a u + b): lambda(0) = logsnr_max, lambda(1) = logsnr_min."""
  b = jnp.arctan(jnp.exp(-0.5 * logsnr_max))
  a = jnp.arctan(jnp.exp(-0.5 * logsnr_min)) - b
  return -2.0 * jnp.log(jnp.tan(a * u + b))


def cosine_sigma(u, logsnr_min=-20.0, logsnr_max=20.0):
  """The VE noise level exp(-lambda(u)/2) = tan(a u + b) of the cosine schedule: z = alpha x + sigma_vp eps is
  alpha (x + sigma eps) with sigma = sigma_vp / alpha, so VP time u is the EDM noise level sigma(u)."""
  b = jnp.arctan(jnp.exp(-0.5 * logsnr_max))
  a = jnp.arctan(jnp.exp(-0.5 * logsnr_min)) - b
  return jnp.tan(a * u + b)


def ddim_step(denoise_fn: DenoiseFn, y, sigma_t, sigma_s, clip_denoised=None):
  """One deterministic DDIM step from noise level sigma_t to sigma_s (per-sample [N]) in EDM coordinates
  y = z / alpha: y_s = x_hat + (sigma_s / sigma_t)(y - x_hat), i.e. z_s = alpha_s x_hat + sigma_s eps_hat.
  Returns (y_s, x_hat). clip_denoised (a float c) clips x_hat to [-c, c] first, as the eps it implies."""
  x_hat = denoise_fn(y, sigma_t)
  if clip_denoised:
    x_hat = jnp.clip(x_hat, -clip_denoised, clip_denoised)
  return x_hat + expand(sigma_s / sigma_t, y) * (y - x_hat), x_hat


def ddim_sampler(denoise_fn: DenoiseFn, noise, num_steps, logsnr_min=-20.0, logsnr_max=20.0,
                 clip_denoised=None):
  """Deterministic DDIM on the cosine log-SNR grid u_i = i / num_steps (Salimans & Ho 2022), in EDM
  coordinates. Starts from z_1 = noise, i.e. y = sqrt(1 + sigma(1)^2) noise, takes steps u_i -> u_{i-1} and
  returns the last step's x_hat (PD's sampler). `num_steps` may be traced (e.g. the current PD round's)."""
  n = noise.shape[0]
  steps = jnp.asarray(num_steps, jnp.int32)
  sigma = lambda i: jnp.full((n,), cosine_sigma(i.astype(jnp.float32) / steps, logsnr_min, logsnr_max))

  def body(k, carry):
    y, _ = carry
    i = steps - k   # u_i -> u_{i-1}
    return ddim_step(denoise_fn, y, sigma(i), sigma(i - 1), clip_denoised)

  y0 = noise * jnp.sqrt(1.0 + cosine_sigma(1.0, logsnr_min, logsnr_max) ** 2)
  _, x_hat = jax.lax.fori_loop(0, steps, body, (y0, jnp.zeros_like(noise)))
  return x_hat


__all__ += ["consistency_sampler", "cosine_logsnr", "cosine_sigma", "ddim_step", "ddim_sampler"]
