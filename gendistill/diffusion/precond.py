"""Preconditioning of a raw network F into a denoiser D (EDM, Karras et al. 2022, Table 1).

D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)).
Every objective calls denoisers built from these coefficients; nothing else defines them.
"""
from typing import NamedTuple

import jax.numpy as jnp

VP_BETA_D = 19.9
VP_BETA_MIN = 0.1
VP_M = 1000


class Coefficients(NamedTuple):
  c_skip: jnp.ndarray
  c_out: jnp.ndarray
  c_in: jnp.ndarray
  c_noise: jnp.ndarray


def vp_sigma(t, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
  """sigma(t) of the VP SDE in EDM's parameterisation."""
  return jnp.sqrt(jnp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
  """t such that vp_sigma(t) = sigma."""
  return (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log1p(sigma**2)) - beta_min) / beta_d


def edm(sigma, sigma_data=0.5) -> Coefficients:
  s2 = sigma**2 + sigma_data**2
  return Coefficients(
      c_skip=sigma_data**2 / s2,
      c_out=sigma * sigma_data / jnp.sqrt(s2),
      c_in=1 / jnp.sqrt(s2),
      c_noise=jnp.log(sigma) / 4,
  )


def vp(sigma, sigma_data=None) -> Coefficients:
  del sigma_data
  return Coefficients(
      c_skip=jnp.ones_like(sigma),
      c_out=-sigma,
      c_in=1 / jnp.sqrt(sigma**2 + 1),
      c_noise=(VP_M - 1) * vp_sigma_inv(sigma),
  )


def ve(sigma, sigma_data=None) -> Coefficients:
  del sigma_data
  return Coefficients(
      c_skip=jnp.ones_like(sigma),
      c_out=sigma,
      c_in=jnp.ones_like(sigma),
      c_noise=jnp.log(0.5 * sigma),
  )


def consistency(sigma, sigma_data=0.5, sigma_min=0.002) -> Coefficients:
  """Consistency-model boundary condition: c_skip(sigma_min) = 1, c_out(sigma_min) = 0, so f(x, sigma_min) = x."""
  return Coefficients(
      c_skip=sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2),
      c_out=sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma**2 + sigma_data**2),
      c_in=1 / jnp.sqrt(sigma**2 + sigma_data**2),
      c_noise=jnp.log(sigma) / 4,
  )


PRECONDITIONERS = {"edm": edm, "vp": vp, "ve": ve, "consistency": consistency}


def coefficients(kind: str, sigma, sigma_data=0.5) -> Coefficients:
  if kind not in PRECONDITIONERS:
    raise ValueError(f"Unknown preconditioning {kind!r}; expected one of {sorted(PRECONDITIONERS)}.")
  return PRECONDITIONERS[kind](sigma, sigma_data)
