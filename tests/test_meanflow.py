"""MeanFlow: the identity and its target on the closed-form flow of a Gaussian, u(z, t, t) = v(z, t), the JVP's
total derivative against finite differences, the sampler on the exact average velocity, the stop-gradient of the
adaptive weight, the guided velocity, the (r, t) draws, and real steps on a tiny MLP (also class-conditional with
CFG folded into training)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill import data as data_lib
from gendistill import objectives
from gendistill.data import DataSpec
from gendistill.objectives import meanflow as mf
from gendistill.objectives.base import example_batch

MU, S = jnp.asarray([0.4, -0.2]), 0.3


def _std(t):
  return jnp.sqrt((1 - t) ** 2 * S**2 + t**2)[:, None]


def _flow_map(z, t, r):
  """The exact flow of z_t = (1 - t) x + t e for x ~ N(MU, S^2 I): z_r = m(r) + std(r)/std(t) (z_t - m(t))."""
  m = lambda s: (1 - s)[:, None] * MU
  return m(r) + _std(r) / _std(t) * (z - m(t))


def _velocity(z, t):
  """The marginal velocity v(z, t) = m'(t) + std'(t)/std(t) (z - m(t))."""
  dstd = ((-(1 - t) * S**2 + t) / _std(t)[:, 0])[:, None]
  return -MU + dstd / _std(t) * (z - (1 - t)[:, None] * MU)


def _average_velocity(z, r, t):
  """u(z, r, t) = (z - z_r)/(t - r), and v where r = t."""
  gap = (t - r)[:, None]
  safe = jnp.where(gap > 0, gap, 1.0)
  return jnp.where(gap > 0, (z - _flow_map(z, t, r)) / safe, _velocity(z, t))


def _points(n=32, seed=0):
  r = np.random.default_rng(seed)
  a, b = r.uniform(0.05, 0.95, n), r.uniform(0.05, 0.95, n)
  t, rr = np.maximum(a, b), np.minimum(a, b)
  return jnp.asarray(r.standard_normal((n, 2)), jnp.float32), jnp.asarray(rr, jnp.float32), jnp.asarray(t, jnp.float32)


def test_meanflow_target_of_the_exact_average_velocity_is_itself():
  z, r, t = _points()
  u, target = mf.meanflow_target(_average_velocity, z, r, t, _velocity(z, t))
  np.testing.assert_allclose(target, _average_velocity(z, r, t), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(u, _average_velocity(z, r, t), rtol=1e-6)
  # The average differs from the instantaneous velocity (so the (t - r) du/dt term is what makes them agree),
  # and the target with the opposite sign of that term is wrong.
  v = _velocity(z, t)
  assert float(jnp.max(jnp.abs(u - v))) > 1e-2
  _, dudt = jax.jvp(lambda zz, s: _average_velocity(zz, r, s), (z, t), (v, jnp.ones_like(t)))
  assert float(jnp.max(jnp.abs(v + (t - r)[:, None] * dudt - u))) > 1e-2


def test_u_at_r_equal_t_is_the_velocity_and_the_target_is_v_there():
  z, _, t = _points(seed=1)
  np.testing.assert_allclose(_average_velocity(z, t - 1e-3, t), _velocity(z, t), rtol=2e-2, atol=2e-3)
  v = jnp.asarray(np.random.default_rng(2).standard_normal(z.shape), jnp.float32)   # any (conditional) velocity
  _, target = mf.meanflow_target(_average_velocity, z, t, t, v)
  np.testing.assert_allclose(target, v, rtol=1e-6)


def test_jvp_is_the_total_derivative_along_the_flow():
  z, r, t = _points(seed=3)
  r = jnp.minimum(r, t - 0.05)       # away from r = t, where the closed form switches branch
  v = _velocity(z, t)
  _, dudt = jax.jvp(lambda zz, s: _average_velocity(zz, r, s), (z, t), (v, jnp.ones_like(t)))
  h = 1e-3
  fd = (_average_velocity(z + h * v, r, t + h) - _average_velocity(z - h * v, r, t - h)) / (2 * h)
  np.testing.assert_allclose(dudt, fd, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("steps", [1, 2])
def test_sampler_with_the_exact_average_velocity_is_the_flow_map(steps):
  e = jax.random.normal(jax.random.key(0), (6, 2))
  out = mf.meanflow_sampler(_average_velocity, e, steps)
  np.testing.assert_allclose(out, MU + S * e, rtol=1e-5, atol=1e-6)


def test_adaptive_weight_is_stop_gradiented():
  u = jnp.asarray([[0.3, -0.2], [1.0, 2.0]])
  target = jnp.zeros_like(u)
  p, c = 1.0, 1e-3
  grad = jax.grad(lambda x: jnp.sum(mf.adaptive_loss(x, target, p, c)[0]))(u)
  sq = jnp.sum(u**2, axis=1, keepdims=True)
  np.testing.assert_allclose(grad, 2 * u / (sq + c), rtol=1e-5)
  np.testing.assert_allclose(mf.adaptive_loss(u, target, 0.0, c)[0], sq[:, 0], rtol=1e-6)   # p = 0: plain L2


def test_guided_velocity_is_cfg_in_expectation():
  """E[v | z, c] = v_c, so E[v~] = v_u + omega (v_c - v_u) (kappa = 0) and the kappa mix of the paper."""
  v_c, v_u = jnp.asarray([1.0, 2.0]), jnp.asarray([-1.0, 0.5])
  np.testing.assert_allclose(mf.guided_velocity(v_c, v_c, v_u, 3.0, 0.0), v_u + 3.0 * (v_c - v_u), rtol=1e-6)
  np.testing.assert_allclose(mf.guided_velocity(v_c, v_c, v_u, 2.0, 0.5), 2.5 * v_c - 1.5 * v_u, rtol=1e-6)
  np.testing.assert_allclose(mf.guided_velocity(v_c, v_c, v_u), v_c)


def test_time_draws():
  r, t = mf.sample_times(jax.random.key(0), 20000, p_mean=-0.4, p_std=1.0, ratio=0.25)
  assert bool(jnp.all(r <= t)) and bool(jnp.all((t > 0) & (t < 1)))
  assert abs(float(jnp.mean(r < t)) - 0.25) < 0.02
  # t is the larger of two logit-normal draws: P(t < 0.5) = P(both < 0.5) = Phi(0.4)^2.
  np.testing.assert_allclose(float(jnp.mean(t < 0.5)), 0.6554 ** 2, atol=0.02)


_CACHE = {}


def _setup(num_classes=0, **overrides):
  key = (num_classes, tuple(sorted(overrides.items())))
  if key not in _CACHE:
    config = importlib.import_module("configs.meanflow").get_config("toy2d,smoke")
    config.objective.meanflow.update(overrides)
    spec = DataSpec("x", (2,), num_classes)
    objective = objectives.build(config, spec)
    state = jax.jit(objective.init)(jax.random.key(0), example_batch(spec), None)
    _CACHE[key] = (config, spec, objective, state, jax.jit(objective.train_step))
  return _CACHE[key]


def _batch(spec, seed):
  r = np.random.default_rng(seed)
  batch = {"x": jnp.asarray(r.standard_normal((8, 2)), jnp.float32)}
  if spec.num_classes:
    batch["label"] = jnp.asarray(r.integers(0, spec.num_classes, 8), jnp.int32)
  return batch


@pytest.mark.parametrize("num_classes,overrides", [(0, {}), (3, {"omega": 2.0, "kappa": 0.5})])
def test_objective_steps_and_samples(num_classes, overrides):
  _, spec, objective, state, step = _setup(num_classes, **overrides)
  for i in range(3):
    state, metrics = step(state, _batch(spec, i), None)
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert float(metrics["generator/grad_norm"]) > 0
  for steps in (1, 2):
    out = jax.jit(objective.sample, static_argnums=(2, 4))(state, jax.random.key(1), 7, None, steps)
    assert out.shape == (7, 2) and bool(jnp.all(jnp.isfinite(out)))
  # The exported denoiser is x0 = z - t u(z, t, t) in EDM coordinates.
  d = objective.apply_fn(state.ema["generator"], jnp.ones((3, 2)), jnp.full((3,), 2.0))
  assert d.shape == (3, 2)


def test_label_dropout_in_the_network_is_an_error():
  config = importlib.import_module("configs.meanflow").get_config("toy2d,smoke")
  config.network.label_dropout = 0.1
  with pytest.raises(ValueError, match="class_dropout"):
    objectives.build(config, data_lib.build(config.data).spec)
