"""Training noise levels and loss weights (EDM, VP, VE) and the noising convention x_sigma = x + sigma n."""
import jax
import jax.numpy as jnp

from gendistill.diffusion import precond


def expand(v, x):
  """Broadcast a per-sample vector [N] against x [N, ...]."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def lognormal_sigma(rng, n, p_mean=-1.2, p_std=1.2):
  """EDM: ln sigma ~ N(p_mean, p_std^2)."""
  return jnp.exp(p_mean + p_std * jax.random.normal(rng, (n,)))


def edm_weight(sigma, sigma_data=0.5):
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def vp_training_sigma(rng, n, eps_t=1e-5):
  t = jax.random.uniform(rng, (n,), minval=eps_t, maxval=1.0)
  return precond.vp_sigma(t)


def ve_training_sigma(rng, n, sigma_min=0.02, sigma_max=100.0):
  u = jax.random.uniform(rng, (n,))
  return sigma_min * (sigma_max / sigma_min) ** u


def inverse_square_weight(sigma, sigma_data=None):
  del sigma_data
  return 1 / sigma**2


# name -> (sigma sampler(rng, n), weight(sigma, sigma_data)); docs/objectives/teacher_training.md.
TRAINING_NOISE = {
    "edm": (lognormal_sigma, edm_weight),
    "vp": (vp_training_sigma, inverse_square_weight),
    "ve": (ve_training_sigma, inverse_square_weight),
}


def training_noise(kind: str):
  if kind not in TRAINING_NOISE:
    raise ValueError(f"Unknown training noise {kind!r}; expected one of {sorted(TRAINING_NOISE)}.")
  return TRAINING_NOISE[kind]


def training_sigma(kind: str, rng, n, p_mean=-1.2, p_std=1.2):
  """Training noise levels [n] of `kind`; p_mean and p_std are the log-normal's (edm) and unused otherwise."""
  sample_sigma, _ = training_noise(kind)
  if kind == "edm":
    return sample_sigma(rng, n, p_mean, p_std)
  return sample_sigma(rng, n)
