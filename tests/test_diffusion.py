"""The shared diffusion math: preconditioning, training noise, samplers, guidance, the exact mixture denoiser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill.diffusion import guidance, noise, precond, samplers
from gendistill.teachers import analytic, gaussian_mixture


def test_edm_preconditioning_identities():
  sigma_d = 0.5
  sigma = jnp.geomspace(0.002, 80.0, 50)
  c = precond.edm(sigma, sigma_d)
  # Unit-variance network input and unit-variance effective training target (EDM appendix B.6).
  np.testing.assert_allclose(c.c_in**2 * (sigma**2 + sigma_d**2), 1.0, rtol=1e-5)
  target_var = (sigma_d**2 * (1 - c.c_skip) ** 2 + c.c_skip**2 * sigma**2) / c.c_out**2
  np.testing.assert_allclose(target_var, 1.0, rtol=1e-4)
  np.testing.assert_allclose(c.c_noise, np.log(np.asarray(sigma)) / 4, rtol=1e-6)


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
def test_denoiser_tends_to_identity_as_sigma_vanishes(kind):
  """D(x; sigma) -> x as sigma -> 0 whatever the (bounded) network output."""
  x = jax.random.normal(jax.random.key(0), (16, 4, 4, 3))
  raw = jax.random.normal(jax.random.key(1), x.shape)
  bound = 1.1 * float(jnp.max(jnp.abs(raw)))   # |D - x| <= |c_skip - 1| |x| + |c_out| |F| = O(sigma)
  for s in [1e-1, 1e-2, 1e-3, 1e-4]:
    c = precond.coefficients(kind, jnp.full((16,), s))
    d = noise.expand(c.c_skip, x) * x + noise.expand(c.c_out, x) * raw
    assert float(jnp.max(jnp.abs(d - x))) <= bound * s, (kind, s)


def test_vp_schedule_inverse_and_consistency_boundary():
  t = jnp.linspace(1e-3, 1.0, 20)
  np.testing.assert_allclose(precond.vp_sigma_inv(precond.vp_sigma(t)), t, rtol=1e-4, atol=1e-6)
  c = precond.consistency(jnp.asarray([0.002]), 0.5, 0.002)
  assert float(c.c_skip[0]) == 1.0 and float(c.c_out[0]) == 0.0


def test_training_noise_and_weights():
  sigma = noise.lognormal_sigma(jax.random.key(0), 200_000, -1.2, 1.2)
  np.testing.assert_allclose(np.mean(np.log(sigma)), -1.2, atol=0.01)
  np.testing.assert_allclose(np.std(np.log(sigma)), 1.2, atol=0.01)
  s = jnp.asarray([0.1, 1.0, 10.0])
  np.testing.assert_allclose(noise.edm_weight(s, 0.5), (s**2 + 0.25) / (s * 0.5) ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown training noise 'foo'"):
    noise.training_noise("foo")


def test_karras_sigmas_match_formula():
  ts = np.asarray(samplers.karras_sigmas(18))
  i = np.arange(18)
  expect = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(ts[:-1], expect, rtol=1e-5)
  assert ts[-1] == 0 and samplers.heun_nfe(18) == 35


def _gaussian_denoiser(s2):
  return lambda x, sigma: s2 / (s2 + noise.expand(sigma, x) ** 2) * x


def test_heun_solves_the_gaussian_probability_flow_ode():
  """For x ~ N(0, s^2 I) the ODE solution is x(sigma) = x(T) sqrt(s^2 + sigma^2)/sqrt(s^2 + T^2).

  Heun is second order: doubling-ish the steps cuts the error by about 4x; Euler's error is far larger.
  """
  s2 = 0.3
  noise_in = jax.random.normal(jax.random.key(0), (64, 3))
  exact = noise_in * 80.0 * np.sqrt(s2) / np.sqrt(s2 + 80.0**2)
  err = lambda out: float(jnp.max(jnp.abs(out / exact - 1)))
  heun = {n: err(samplers.heun_sampler(_gaussian_denoiser(s2), noise_in, num_steps=n)) for n in (18, 36, 150)}
  assert heun[150] < 1e-3
  assert heun[36] < heun[18] / 3.5
  assert err(samplers.euler_sampler(_gaussian_denoiser(s2), noise_in, num_steps=18)) > 2.5 * heun[18]


def test_heun_counts_2n_minus_1_evaluations():
  calls = []

  def counting(x, sigma):
    jax.debug.callback(lambda: calls.append(1))
    return _gaussian_denoiser(0.3)(x, sigma)

  samplers.heun_sampler(counting, jnp.ones((2, 2)), num_steps=5).block_until_ready()
  assert len(calls) == samplers.heun_nfe(5) == 9


def test_stochastic_heun_keeps_the_gaussian_variance():
  s2 = 0.3
  noise_in = jax.random.normal(jax.random.key(0), (20000, 2))
  out = samplers.heun_sampler(_gaussian_denoiser(s2), noise_in, jax.random.key(1), num_steps=128, s_churn=40,
                              s_min=0.05, s_max=50, s_noise=1.0)
  np.testing.assert_allclose(np.var(out, axis=0), s2, rtol=0.04)
  deterministic = samplers.heun_sampler(_gaussian_denoiser(s2), noise_in, num_steps=128)
  assert float(jnp.mean(jnp.abs(out - deterministic))) > 0.1   # the churn noise really enters
  with pytest.raises(ValueError, match="needs an rng"):
    samplers.heun_sampler(_gaussian_denoiser(s2), noise_in, num_steps=4, s_churn=1.0)


def test_classifier_free_guidance_formula():
  x = jax.random.normal(jax.random.key(0), (4, 3))
  labels = jax.nn.one_hot(jnp.array([0, 1, 1, 0]), 2)
  # The unconditional input is the zero one-hot: 2x; the conditional one 5x + 1.
  net = lambda params, x, sigma, labels: jnp.where(jnp.sum(labels, 1, keepdims=True) > 0, 5.0 * x + 1.0, 2.0 * x)
  for w in [1.0, 1.5, 4.5]:
    out = guidance.bind_denoiser(net, None, labels, w)(x, jnp.ones(4))
    np.testing.assert_allclose(out, 2.0 * x + w * (5.0 * x + 1.0 - 2.0 * x), rtol=1e-6)


# A two-dimensional mixture with unequal weights and full covariances.
WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
COVS = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.1, -0.05], [-0.05, 0.4]], [[0.2, 0.0], [0.0, 0.05]]])


def _sample_mixture(rng, n):
  rng = np.random.default_rng(rng)
  k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
  chol = np.linalg.cholesky(COVS)
  return MEANS[k] + np.einsum("nij,nj->ni", chol[k], rng.standard_normal((n, 2))), k


def test_single_gaussian_denoiser_closed_form():
  params = analytic.mixture_params([1.0], MEANS[:1], COVS[:1])
  y = jax.random.normal(jax.random.key(0), (8, 2)) * 2
  for sigma in [0.05, 0.7, 5.0]:
    expect = MEANS[0] + (np.linalg.solve(COVS[0] + sigma**2 * np.eye(2), (np.asarray(y) - MEANS[0]).T).T
                         @ COVS[0].T)
    np.testing.assert_allclose(analytic.gmm_denoise(params, y, sigma), expect, rtol=1e-4, atol=1e-5)


def test_mixture_denoiser_equals_monte_carlo_posterior_mean():
  """E[x | y] by self-normalised importance sampling with the prior as proposal, at typical noisy points y."""
  teacher = gaussian_mixture(WEIGHTS, MEANS, COVS)
  prior, _ = _sample_mixture(0, 400_000)
  rng = np.random.default_rng(1)
  for sigma in [0.3, 1.0, 3.0]:
    ys = _sample_mixture(2, 4)[0] + sigma * rng.standard_normal((4, 2))
    exact = np.asarray(teacher(jnp.asarray(ys, jnp.float32), sigma))
    for y, d in zip(ys, exact):
      logw = -0.5 * np.sum((y - prior) ** 2, axis=1) / sigma**2
      w = np.exp(logw - logw.max())
      w /= w.sum()
      mc = w @ prior
      stderr = np.sqrt(w**2 @ (prior - mc) ** 2)
      assert np.all(np.abs(d - mc) < 4 * stderr + 2e-3), (sigma, y, d, mc, stderr)


@pytest.mark.parametrize("num_steps,mean_tol,cov_tol", [(18, 0.08, 0.05), (60, 0.03, 0.015)])
def test_heun_with_exact_mixture_denoiser_reproduces_the_mixture(num_steps, mean_tol, cov_tol):
  """Heun from the exact denoiser gives the mixture: weights, means and covariances per mode.

  At NFE 35 (N = 18) the discretisation still pushes modes outward by about 0.05 here; at N = 60 it is gone.
  """
  teacher = gaussian_mixture(WEIGHTS, MEANS, COVS)
  n = 20000
  samples = np.asarray(jax.jit(lambda z: samplers.heun_sampler(teacher.denoise_fn(), z, num_steps=num_steps))(
      jax.random.normal(jax.random.key(3), (n, 2))))
  inv = np.linalg.inv(COVS)
  d = samples[:, None, :] - MEANS[None]
  maha = np.einsum("nki,kij,nkj->nk", d, inv, d) + np.log(np.linalg.det(COVS))[None] - 2 * np.log(WEIGHTS)[None]
  k = np.argmin(maha, axis=1)
  np.testing.assert_allclose(np.bincount(k, minlength=3) / n, WEIGHTS, atol=0.015)
  for j in range(3):
    pts = samples[k == j]
    np.testing.assert_allclose(pts.mean(0), MEANS[j], atol=mean_tol)
    np.testing.assert_allclose(np.cov(pts.T), COVS[j], atol=cov_tol)


def test_grid_and_analytic_teacher_follow_the_enabled_precision():
  """With float64 enabled the Karras grid and the exact denoiser are float64 and agree with numpy in float64
  (a float32 grid moved a 5-step float64 Heun run by 2e-4 against the official sampler)."""
  i = np.arange(5, dtype=np.float64)
  ref = (80.0 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
  with jax.enable_x64(True):
    grid = samplers.karras_sigmas(5)
    assert grid.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(grid[:-1]), ref, rtol=1e-13)
    s2, sigma, y = 0.3, 0.7, np.array([[0.1234567, -2.0]])
    params = analytic.mixture_params([1.0], [[0.0, 0.0]], [np.eye(2) * s2])
    out = analytic.gmm_denoise(params, jnp.asarray(y), sigma)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), s2 / (s2 + sigma**2) * y, rtol=1e-13)
  assert samplers.karras_sigmas(5).dtype == jnp.float32
