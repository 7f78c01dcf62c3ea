"""The exact denoiser of a Gaussian mixture: the ground-truth teacher for tests and toy benchmarks.

For x ~ sum_k w_k N(mu_k, S_k) and y = x + sigma n:
  p(k | y) ∝ w_k N(y; mu_k, S_k + sigma^2 I),   E[x | y, k] = mu_k + S_k (S_k + sigma^2 I)^-1 (y - mu_k),
  D(y; sigma) = E[x | y] = sum_k p(k | y) E[x | y, k].
"""
import jax
import jax.numpy as jnp


def mixture_params(weights, means, covs):
  """The analytic teacher's parameters (arrays, so the teacher is an ordinary pytree argument), in the default
  float precision (float64 when jax_enable_x64 is on)."""
  weights = jnp.asarray(weights, float)
  return {"log_weights": jnp.log(weights / jnp.sum(weights)), "means": jnp.asarray(means, float),
          "covs": jnp.asarray(covs, float)}


def _denoise_one(params, y, sigma):
  means, covs = params["means"], params["covs"]
  dim = means.shape[-1]
  total = covs + sigma**2 * jnp.eye(dim)                             # [K, D, D]
  chol = jnp.linalg.cholesky(total)
  diff = y[None, :] - means                                          # [K, D]
  white = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
  log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
  log_prob = params["log_weights"] - 0.5 * (jnp.sum(white**2, -1) + log_det)
  resp = jax.nn.softmax(log_prob)                                    # p(k | y)
  solved = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]   # (S_k + s^2 I)^-1 (y - mu_k)
  post_means = means + jnp.einsum("kij,kj->ki", covs, solved)
  return resp @ post_means


def gmm_denoise(params, x, sigma, labels=None, train=False, rngs=None):
  """Network-contract apply function: x [N, D], sigma scalar or [N] -> E[x0 | x]."""
  del labels, train, rngs
  sigma = jnp.broadcast_to(jnp.asarray(sigma, float), x.shape[:1])
  return jax.vmap(_denoise_one, in_axes=(None, 0, 0))(params, x, sigma)
