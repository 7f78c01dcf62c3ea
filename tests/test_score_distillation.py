"""Score distillation (SiD, SiDA, Diff-Instruct/VSD, DMD/DMD2, f-distill): the losses against written-out math on
closed-form networks, the update schedules, and one real step of each objective on a tiny MLP."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base as base_config
from gendistill import data as data_lib
from gendistill import objectives
from gendistill import teachers
from gendistill.objectives import diff_instruct, dmd, score_common, sid
from gendistill.objectives.base import example_batch

B, D = 5, 4
ALPHA = 1.2


def _linear_nets(seed=0):
  """Two affine denoisers D(x; sigma) = x A^T + sigma b (closed form, so gradients can be written out)."""
  r = np.random.default_rng(seed)
  a_r, a_f = (np.eye(D) * 0.6 + 0.2 * r.standard_normal((D, D)) for _ in range(2))
  b_r, b_f = r.standard_normal(D), r.standard_normal(D)
  real_fn = lambda x, s: x @ jnp.asarray(a_r.T, jnp.float32) + s[:, None] * jnp.asarray(b_r, jnp.float32)
  fake_fn = lambda x, s: x @ jnp.asarray(a_f.T, jnp.float32) + s[:, None] * jnp.asarray(b_f, jnp.float32)
  return (a_r, b_r, real_fn), (a_f, b_f, fake_fn)


def _inputs(seed=1):
  r = np.random.default_rng(seed)
  return (r.standard_normal((B, D)).astype(np.float32), np.exp(r.standard_normal(B)).astype(np.float32),
          r.standard_normal((B, D)).astype(np.float32))


def _nonlinear_net(seed):
  w = jnp.asarray(np.random.default_rng(seed).standard_normal((D, D)), jnp.float32)
  return lambda x, s: jnp.tanh(x @ w) * s[:, None] + 0.3 * x


# ------------------------------------------------------------------------------------------------------------
# SiD: loss and gradient against the written-out formula.


def test_sid_generator_loss_and_gradient_equal_the_written_out_formula():
  (a_r, b_r, real_fn), (a_f, b_f, fake_fn) = _linear_nets()
  x_g, sigma, n = _inputs()

  def loss(x):
    per_sample, _ = sid.sid_generator_objective(x, jnp.asarray(sigma), jnp.asarray(n), real_fn, fake_fn,
                                                alpha=ALPHA)
    return 100.0 * jnp.mean(per_sample)

  value, grad = jax.value_and_grad(loss)(jnp.asarray(x_g))

  # The formula in numpy: x_t = x_g + sigma n; y = A x_t + sigma b; w = mean|x_g - y_r| (a constant);
  # L = 100/B sum_b sum_pix (y_r - y_f) * ((y_r - x_g) - alpha (y_r - y_f)) / w.
  x_g64, n64, s64 = (np.asarray(v, np.float64) for v in (x_g, n, sigma))
  x_t = x_g64 + s64[:, None] * n64
  y_r = x_t @ a_r.T + s64[:, None] * b_r
  y_f = x_t @ a_f.T + s64[:, None] * b_f
  w = np.abs(x_g64 - y_r).mean(axis=1)
  d, e = y_r - y_f, (y_r - x_g64) - ALPHA * (y_r - y_f)
  expect = 100.0 / B * np.sum(np.sum(d * e, axis=1) / w)
  # d/dx_g (x_t = x_g + sigma n moves both networks' inputs): dd/dx = (A_r - A_f), de/dx = A_r - I - alpha (A_r - A_f).
  dd = a_r - a_f
  de = a_r - np.eye(D) - ALPHA * (a_r - a_f)
  expect_grad = 100.0 / B * (e @ dd + d @ de) / w[:, None]
  np.testing.assert_allclose(value, expect, rtol=1e-5)
  np.testing.assert_allclose(grad, expect_grad, rtol=1e-4, atol=1e-5)

  # jax.grad of the formula written directly, with sg only on w.
  def direct(x):
    xt = x + jnp.asarray(sigma)[:, None] * jnp.asarray(n)
    yr, yf = real_fn(xt, jnp.asarray(sigma)), fake_fn(xt, jnp.asarray(sigma))
    ww = jax.lax.stop_gradient(jnp.abs(x - yr).mean(axis=1))
    return 100.0 / B * jnp.sum(jnp.sum((yr - yf) * ((yr - x) - ALPHA * (yr - yf)), axis=1) / ww)
  np.testing.assert_allclose(grad, jax.grad(direct)(jnp.asarray(x_g)), rtol=1e-5, atol=1e-6)

  # Without the gradient through the networks' inputs the result is different (so the test would catch it).
  def no_input_path(x):
    sg = jax.lax.stop_gradient
    per_sample, _ = sid.sid_generator_objective(
        x, jnp.asarray(sigma), jnp.asarray(n), lambda v, s: real_fn(sg(v), s), lambda v, s: fake_fn(sg(v), s),
        alpha=ALPHA)
    return 100.0 * jnp.mean(per_sample)
  detached = jax.grad(no_input_path)(jnp.asarray(x_g))
  assert np.max(np.abs(detached - grad)) > 0.1 * np.max(np.abs(grad))
  # ... and so would a wrong alpha or a gradient through w.
  def grad_through_w(x):
    xt = x + jnp.asarray(sigma)[:, None] * jnp.asarray(n)
    yr, yf = real_fn(xt, jnp.asarray(sigma)), fake_fn(xt, jnp.asarray(sigma))
    return 100.0 / B * jnp.sum(jnp.sum((yr - yf) * ((yr - x) - ALPHA * (yr - yf)), axis=1) /
                               jnp.abs(x - yr).mean(axis=1))
  assert np.max(np.abs(jax.grad(grad_through_w)(jnp.asarray(x_g)) - grad)) > 1e-3


def test_sid_loss_terms_alpha_one_form_and_nonfinite_samples_dropped():
  r = np.random.default_rng(3)
  x_g, y_r, y_f = (jnp.asarray(r.standard_normal((B, D)), jnp.float32) for _ in range(3))
  per_sample, w = sid.sid_loss_terms(x_g, y_r, y_f, y_f, alpha=1.0)
  # alpha = 1: (y_r - y_f)^T (y_f - x_g) / w.
  np.testing.assert_allclose(per_sample, np.sum((y_r - y_f) * (y_f - x_g), axis=1) / w, rtol=1e-5)
  bad = y_r.at[2, 1].set(jnp.nan)
  per_sample_bad, _ = sid.sid_loss_terms(x_g, bad, y_f, y_f, alpha=1.0)
  assert per_sample_bad[2] == 0 and np.all(np.isfinite(per_sample_bad))
  np.testing.assert_allclose(np.delete(per_sample_bad, 2), np.delete(per_sample, 2), rtol=1e-6)


def test_sid_sigma_is_uniform_in_karras_rho_space_up_to_t_max():
  sigma = np.asarray(score_common.sid_sigma(jax.random.key(0), 20000, t_max=800))
  assert sigma.min() >= 0.002 - 1e-6 and sigma.max() <= 24.41
  # sigma^(1/rho) = max^(1/rho) + v (min^(1/rho) - max^(1/rho)) with v = 1 - u ~ U(0.2, 1).
  v = (80 ** (1 / 7) - sigma ** (1 / 7)) / (80 ** (1 / 7) - 0.002 ** (1 / 7))
  assert abs(v.min() - 0.2) < 0.01 and abs(v.max() - 1.0) < 0.01
  np.testing.assert_allclose(np.mean(v), 0.6, atol=0.01)


# ------------------------------------------------------------------------------------------------------------
# Integral KL (Diff-Instruct, VSD) and DMD: zero gradient for a perfect fake score; the exact gradient otherwise.


@pytest.mark.parametrize("weighting", ["none", "vsd", "dmd"])
def test_integral_kl_gradient_is_zero_when_fake_equals_teacher_and_exact_otherwise(weighting):
  x_g, sigma, n = (jnp.asarray(v) for v in _inputs())
  real_fn, fake_fn = _nonlinear_net(0), _nonlinear_net(1)
  loss = lambda x, fake: jnp.mean(diff_instruct.integral_kl_objective(x, sigma, n, real_fn, fake,
                                                                      weighting=weighting))
  zero = jax.grad(loss)(x_g, real_fn)
  assert np.all(np.asarray(zero) == 0.0)
  grad = jax.grad(loss)(x_g, fake_fn)
  x_t = x_g + sigma[:, None] * n
  diff = fake_fn(x_t, sigma) - real_fn(x_t, sigma)      # descending moves x_g toward the teacher
  scale = {"none": jnp.ones(B), "vsd": 1 / sigma,
           "dmd": 1 / jnp.abs(x_g - real_fn(x_t, sigma)).mean(axis=1)}[weighting]
  np.testing.assert_allclose(grad, diff * scale[:, None] / B, rtol=1e-5, atol=1e-7)


def test_dmd_gradient_is_zero_when_fake_equals_teacher_and_exact_otherwise():
  x, sigma, n = (jnp.asarray(v) for v in _inputs())
  real_fn, fake_fn = _nonlinear_net(0), _nonlinear_net(1)
  zero = jax.grad(lambda x: dmd.dm_objective(x, sigma, n, real_fn, real_fn))(x)
  assert np.all(np.asarray(zero) == 0.0)
  grad = jax.grad(lambda x: dmd.dm_objective(x, sigma, n, real_fn, fake_fn))(x)
  x_t = x + sigma[:, None] * n
  y_r, y_f = real_fn(x_t, sigma), fake_fn(x_t, sigma)
  w = jnp.abs(x - y_r).mean(axis=1)
  np.testing.assert_allclose(grad, (y_f - y_r) / w[:, None] / x.size, rtol=1e-5, atol=1e-8)


def test_fdistill_with_reverse_kl_reduces_to_dmd_and_other_divergences_reweight():
  x, sigma, n = (jnp.asarray(v) for v in _inputs())
  real_fn, fake_fn = _nonlinear_net(0), _nonlinear_net(1)
  logits = jnp.asarray(np.random.default_rng(4).standard_normal(B) * 2, jnp.float32)
  x_t = x + sigma[:, None] * n
  grad_fn = lambda h: jax.grad(lambda x: dmd.distribution_matching_loss(x, real_fn(x_t, sigma),
                                                                        fake_fn(x_t, sigma), h))(x)
  dmd_grad = jax.grad(lambda x: dmd.dm_objective(x, sigma, n, real_fn, fake_fn))(x)
  h_rkl = dmd.f_divergence_weights(logits, "reverse_kl")
  np.testing.assert_allclose(grad_fn(h_rkl), dmd_grad, rtol=1e-5)
  h_fkl = dmd.f_divergence_weights(logits, "forward_kl")
  r = np.clip(np.exp(np.clip(np.asarray(logits), -10, 10)), 0.1, 20)
  np.testing.assert_allclose(h_fkl, r / (r.mean() + 1e-6), rtol=1e-5)
  np.testing.assert_allclose(grad_fn(h_fkl), dmd_grad * np.asarray(h_fkl)[:, None], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(score_common.F_DIVERGENCES))
def test_f_divergence_weight_is_r_squared_f_second_derivative(name):
  f, h = score_common.F_DIVERGENCES[name]
  r = jnp.array([0.2, 0.7, 1.0, 3.0, 11.0])
  second = jax.vmap(jax.grad(jax.grad(f)))(r)
  np.testing.assert_allclose(h(r), r**2 * second, rtol=1e-4)


def test_dmd_fake_loss_is_the_element_mean_with_karras_weight():
  x, sigma, n = (jnp.asarray(v) for v in _inputs())
  net = lambda p, x, s, labels=None, train=False, rngs=None: p * x
  loss = dmd.dmd_fake_loss(net, 0.9, x, None, sigma, n, sigma_data=0.5)
  expect = np.mean((sigma[:, None] ** -2 + 4.0) * (0.9 * (x + sigma[:, None] * n) - x) ** 2)
  np.testing.assert_allclose(loss, expect, rtol=1e-5)


def test_karras_grid_matches_dmd2_noise_table():
  grid = np.asarray(score_common.karras_grid(1000))
  assert grid[0] == pytest.approx(0.002, rel=1e-5) and grid[-1] == pytest.approx(80.0, rel=1e-5)
  assert np.all(np.diff(grid) > 0)
  assert grid[20] == pytest.approx(0.0032, rel=0.05) and grid[980] == pytest.approx(72.05, rel=0.01)


def test_sida_losses_reductions():
  r = np.random.default_rng(5)
  lr, lf = (jnp.asarray(r.standard_normal((B, 6)), jnp.float32) for _ in range(2))
  weight = jnp.asarray(np.exp(r.standard_normal(B)), jnp.float32)
  bce = lambda z, t: np.log1p(np.exp(-z)) if t else np.log1p(np.exp(z))
  per = 0.5 * (bce(np.asarray(lr), 1) + bce(np.asarray(lf), 0))
  np.testing.assert_allclose(sid.sida_discriminator_loss(lr, lf, weight, "batch"), weight.mean() * per.mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(sid.sida_discriminator_loss(lr, lf, weight, "per_sample"),
                             np.mean(np.asarray(weight) * per.mean(axis=1)), rtol=1e-5)
  w = jnp.asarray(r.uniform(0.1, 1, B), jnp.float32)
  g = bce(np.clip(np.asarray(lf) * 10, -10, 10), 1)
  np.testing.assert_allclose(sid.sida_adversarial_loss(lf * 10, w, 48.0, reduction="per_sample"),
                             48.0 * np.mean(g.mean(axis=1) / np.asarray(w)), rtol=1e-5)
