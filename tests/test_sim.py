"""Score Implicit Matching: the generator gradient against the exact gradient of the score divergence on a Gaussian
(quadrature), the L2 case against SiD (alpha = 1), and real steps on a tiny MLP."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill import data as data_lib
from gendistill import objectives
from gendistill import teachers
from gendistill.objectives import sid, sim
from gendistill.objectives.base import example_batch

B, D = 5, 4


def _linear_nets(seed=0):
  """Two affine denoisers D(x; sigma) = x A^T + sigma b."""
  r = np.random.default_rng(seed)
  a_r, a_f = (np.eye(D) * 0.6 + 0.2 * r.standard_normal((D, D)) for _ in range(2))
  b_r, b_f = r.standard_normal(D), r.standard_normal(D)
  real_fn = lambda x, s: x @ jnp.asarray(a_r.T, jnp.float32) + s[:, None] * jnp.asarray(b_r, jnp.float32)
  fake_fn = lambda x, s: x @ jnp.asarray(a_f.T, jnp.float32) + s[:, None] * jnp.asarray(b_f, jnp.float32)
  return real_fn, fake_fn


def _inputs(seed=1):
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.standard_normal((B, D)), jnp.float32), jnp.asarray(np.exp(r.standard_normal(B)), jnp.float32),
          jnp.asarray(r.standard_normal((B, D)), jnp.float32))


def test_l2_sim_is_twice_sid_with_alpha_one_value_and_gradient():
  """d = ||.||^2: d'(Delta) = 2 Delta, so SIM's loss (with SiD's normaliser) is 2 x SiD's alpha = 1 loss, and so is
  its gradient through x_g and both networks' inputs."""
  real_fn, fake_fn = _linear_nets()
  x_g, sigma, n = _inputs()

  def sim_loss(x):
    per, _ = sim.sim_generator_objective(x, sigma, n, real_fn, fake_fn, kind="l2", normalizer="sid")
    return jnp.mean(per)

  def sid_loss(x):
    per, _ = sid.sid_generator_objective(x, sigma, n, real_fn, fake_fn, alpha=1.0)
    return jnp.mean(per)

  v_sim, g_sim = jax.value_and_grad(sim_loss)(x_g)
  v_sid, g_sid = jax.value_and_grad(sid_loss)(x_g)
  np.testing.assert_allclose(v_sim, 2 * v_sid, rtol=1e-5)
  np.testing.assert_allclose(g_sim, 2 * g_sid, rtol=1e-4, atol=1e-6)
  # Another alpha is another gradient (the comparison can fail).
  g_other = jax.grad(lambda x: jnp.mean(sid.sid_generator_objective(x, sigma, n, real_fn, fake_fn, alpha=1.2)[0]))(x_g)
  assert float(jnp.max(jnp.abs(g_sim - 2 * g_other))) > 1e-2


def _gauss_hermite(num):
  u, w = np.polynomial.hermite_e.hermegauss(num)
  return u, w / np.sqrt(2 * np.pi)


@pytest.mark.parametrize("kind", ["pseudo_huber", "l2"])
def test_sim_gradient_is_the_exact_gradient_of_the_score_divergence(kind):
  """1-D Gaussian generator x_0 = a + b z, Gaussian teacher N(m, s^2): the scores are closed forms, so
  D(a, b) = E_{x ~ pi}[d(sigma^2 (s_p(x) - s_{a,b}(x)))] (pi = the generator's diffused law at (a0, b0), held fixed)
  and E_{z, eps}[SIM loss] are integrals done by Gauss-Hermite quadrature; their gradients at (a0, b0), with the
  fake score the exact score at (a0, b0), must agree."""
  a0, b0, m, s, sigma, huber_c = 0.3, 0.8, -0.5, 1.3, 0.7, 0.2
  score = lambda x, mean, var: -(x - mean) / (var + sigma**2)
  u1, w1 = _gauss_hermite(80)

  def divergence(theta):
    a, b = theta
    x = a0 + np.sqrt(b0**2 + sigma**2) * u1
    delta = sigma**2 * (score(x, m, s**2) - score(x, a, b**2))
    return jnp.sum(w1 * sim.distance(delta[:, None], kind, huber_c))

  uz, ue = (g.ravel() for g in np.meshgrid(u1, u1))
  wq = np.outer(w1, w1).ravel()

  def surrogate(theta, stop_u=False):
    a, b = theta
    x_g = (a + b * uz)[:, None]
    x_t = x_g + sigma * ue[:, None]
    y_r = x_t + sigma**2 * score(x_t, m, s**2)
    y_f = x_t + sigma**2 * score(x_t, a0, b0**2)       # the fake score: exact at (a0, b0), frozen
    if stop_u:   # the variant with d'(y) under stop-gradient, input path included
      y_r, y_f = jax.lax.stop_gradient(y_r) + (y_f - jax.lax.stop_gradient(y_f)), y_f
    per, _ = sim.sim_loss_terms(x_g, y_r, y_f, kind=kind, huber_c=huber_c)
    return jnp.sum(wq * per)

  theta0 = jnp.asarray([a0, b0], jnp.float32)
  want = jax.grad(divergence)(theta0)
  got = jax.grad(surrogate)(theta0)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(want))) > 1e-2
  # Stopping the gradient through the teacher's input (inside d') gives another gradient.
  wrong = jax.grad(lambda th: surrogate(th, stop_u=True))(theta0)
  assert float(jnp.max(jnp.abs(wrong - want))) > 1e-3 * float(jnp.max(jnp.abs(want)))


def test_pseudo_huber_gradient_is_normalised_difference():
  y = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(sim.distance_grad(y, "pseudo_huber", 0.0)[0], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(sim.distance_grad(y, "pseudo_huber", 1.0)[1], [0.0, 0.0])
  np.testing.assert_allclose(sim.distance_grad(y, "l2")[0], [6.0, 8.0])
  with pytest.raises(ValueError, match="distance"):
    sim.distance(y, "l1")


_CACHE = {}


def _setup(**overrides):
  key = tuple(sorted(overrides.items()))
  if key not in _CACHE:
    config = importlib.import_module("configs.sim").get_config("toy2d,smoke")
    config.objective.sim.update(overrides)
    config.objective.sim.fake_score_optimizer.lr = 0.0     # fake score frozen: equal to the teacher below
    dataset = data_lib.build(config.data)
    objective = objectives.build(config, dataset.spec)
    state = jax.jit(objective.init)(jax.random.key(0), example_batch(dataset.spec), None)
    _CACHE[key] = (dataset, objective, state, jax.jit(objective.train_step))
  return _CACHE[key]


def _network_teacher(objective, state, seed=0):
  leaves, tree = jax.tree.flatten(state.params["fake_score"])
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  state = state.replace(params={**state.params, "fake_score": jax.tree.map(jnp.array, params)})
  return teachers.Teacher(params=params, apply_fn=objective.apply_fn), state


def test_sim_steps_samples_and_has_no_gradient_when_the_fake_score_is_the_teacher():
  dataset, objective, state, step = _setup()
  teacher, state = _network_teacher(objective, state)
  batch = next(dataset.iterator())
  new, metrics = step(state, batch, teacher)
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  other, _ = _network_teacher(objective, state, seed=1)
  _, other_metrics = step(state, batch, other)
  assert float(other_metrics["generator/grad_norm"]) > 1e-3
  # d'(0) = 0 and its derivative through x_t is (J_r - J_f) = 0: zero up to the rounding of two backward passes.
  assert float(metrics["generator/grad_norm"]) < 1e-4 * float(other_metrics["generator/grad_norm"])
  out = jax.jit(objective.sample, static_argnums=2)(new, jax.random.key(1), 7)
  assert out.shape == (7, 2) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_distance_is_a_clear_error():
  config = importlib.import_module("configs.sim").get_config("toy2d,smoke")
  config.objective.sim.distance = "lpips"
  with pytest.raises(ValueError, match="objective.sim.distance"):
    objectives.build(config, data_lib.build(config.data).spec)
