"""sCM (sCT, sCD): the JVP tangent against finite differences (also under remat and bf16), the exact EDM <-> TrigFlow
conversion, the teacher velocity of a Gaussian in closed form, the objective's gradient at the exact consistency
function of a Gaussian (zero, and pointing back to it when perturbed), and real steps on a tiny MLP."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill import data as data_lib
from gendistill import nets
from gendistill import objectives
from gendistill import teachers
from gendistill.objectives import scm
from gendistill.objectives.base import example_batch

SD = 0.5   # sigma_data


def _network(remat="none", dtype="float32", seed=0):
  config = importlib.import_module("configs.sct").get_config("toy2d,smoke")
  config.network.update(remat=remat, dtype=dtype)
  spec = data_lib.build(config.data).spec
  net = nets.Network.from_module(nets.build_denoiser(config.network, spec))
  params = net.init(jax.random.key(0), jnp.zeros((2, 2)), jnp.ones((2,)))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  return net, params


def _points(n=16, seed=0):
  r = np.random.default_rng(seed)
  x_t = jnp.asarray(r.standard_normal((n, 2)), jnp.float32)
  t = jnp.asarray(r.uniform(0.1, 1.45, n), jnp.float32)
  v = jnp.asarray(r.standard_normal((n, 2)), jnp.float32)
  return x_t, t, v


@pytest.mark.parametrize("remat", ["none", "full"])
def test_jvp_tangent_equals_finite_difference_directional_derivative(remat):
  net, params = _network(remat)
  fn = scm.trigflow_apply_fn(net, SD)
  x_t, t, v = _points()
  F = lambda x, s: fn(params, x, s)
  cs = jnp.cos(t) * jnp.sin(t)
  _, jvp = jax.jvp(F, (x_t, t), (cs[:, None] * v, cs))
  h = 1e-2
  fd = (F(x_t + h * cs[:, None] * v, t + h * cs) - F(x_t - h * cs[:, None] * v, t - h * cs)) / (2 * h)
  np.testing.assert_allclose(jvp, fd, rtol=2e-2, atol=2e-3 * float(jnp.max(jnp.abs(jvp))))
  assert float(jnp.max(jnp.abs(jvp))) > 1e-2
  # The tangent module function gives the same T (its second term is -(cs x_t + sd T)).
  _, g = scm.tangent(F, x_t, t, v, sigma_data=SD, warmup=1.0, norm="none")
  F0 = F(x_t, t)
  expect = -(jnp.cos(t) ** 2)[:, None] * (SD * F0 - v) - (cs[:, None] * x_t + SD * jvp)
  np.testing.assert_allclose(g, expect, rtol=1e-5, atol=1e-5)


def test_jvp_under_bf16_compute_is_close_to_float32():
  x_t, t, v = _points()
  cs = jnp.cos(t) * jnp.sin(t)
  out = {}
  for dtype in ("float32", "bfloat16"):
    net, params = _network(dtype=dtype)
    fn = scm.trigflow_apply_fn(net, SD)
    out[dtype] = jax.jvp(lambda x, s: fn(params, x, s), (x_t, t), (cs[:, None] * v, cs))[1]
  assert out["bfloat16"].dtype == jnp.float32
  err = float(jnp.linalg.norm(out["bfloat16"] - out["float32"]) / jnp.linalg.norm(out["float32"]))
  assert err < 0.05, err


def test_trigflow_form_of_an_edm_denoiser_is_the_denoiser_exactly():
  net, params = _network()
  fn = scm.trigflow_apply_fn(net, SD)
  r = np.random.default_rng(3)
  x = jnp.asarray(r.standard_normal((16, 2)), jnp.float32)
  sigma = jnp.asarray(np.exp(r.uniform(-3, 3, 16)), jnp.float32)
  np.testing.assert_allclose(scm.denoiser_apply_fn(fn, SD)(params, x, sigma), net.apply(params, x, sigma),
                             rtol=1e-5, atol=1e-5)
  # The general teacher conversion of the same denoiser is sigma_d F (up to the cancellation at small t).
  x_t, t, _ = _points(seed=4)
  vel = scm.teacher_velocity(lambda y, s: net.apply(params, y, s), x_t, t, SD)
  np.testing.assert_allclose(vel, SD * fn(params, x_t, t), rtol=1e-4, atol=1e-4)


def _gaussian(mu=(0.4, -0.2), s=0.3):
  """Data N(mu, s^2 I) in TrigFlow: (EDM denoiser, marginal velocity, exact consistency function)."""
  mu = jnp.asarray(mu, jnp.float32)
  var = lambda t: (jnp.cos(t) ** 2 * s**2 + jnp.sin(t) ** 2 * SD**2)[:, None]
  denoise = lambda x, sigma: mu + s**2 / (s**2 + sigma[:, None] ** 2) * (x - mu)

  def velocity(x_t, t):
    c, sn = jnp.cos(t)[:, None], jnp.sin(t)[:, None]
    r = x_t - c * mu
    return -sn * (mu + c * s**2 / var(t) * r) + c * (sn * SD**2 / var(t) * r)

  f = lambda x_t, t: mu + s / jnp.sqrt(var(t)) * (x_t - jnp.cos(t)[:, None] * mu)
  return denoise, velocity, f


def test_teacher_velocity_of_a_gaussian_is_the_closed_form():
  denoise, velocity, f = _gaussian()
  x_t, t, _ = _points(seed=5)
  np.testing.assert_allclose(scm.teacher_velocity(denoise, x_t, t, SD), velocity(x_t, t), rtol=1e-4, atol=1e-5)
  # f is constant along the ODE: d/dt f(x_t, t) = 0 with dx_t/dt = velocity.
  _, df = jax.jvp(f, (x_t, t), (velocity(x_t, t), jnp.ones_like(t)))
  np.testing.assert_allclose(df, 0.0, atol=1e-5)


def _param_F(exact_f):
  """F_theta = F_exact + a x_t + b: exact at a = b = 0."""
  def F_fn(params, x_t, t):
    F_exact = (jnp.cos(t)[:, None] * x_t - exact_f(x_t, t)) / (SD * jnp.sin(t)[:, None])
    return F_exact + params["a"] * x_t + params["b"]
  return F_fn


@pytest.mark.parametrize("norm", ["normalize", "clip", "none"])
def test_scd_gradient_vanishes_at_the_exact_consistency_function_of_a_gaussian(norm):
  denoise, _, f = _gaussian()
  F_fn = _param_F(f)
  r = np.random.default_rng(6)
  n = 256
  x0 = jnp.asarray(0.3 * r.standard_normal((n, 2)) + [0.4, -0.2], jnp.float32)
  z = jnp.asarray(SD * r.standard_normal((n, 2)), jnp.float32)
  t = jnp.asarray(r.uniform(0.05, 1.5, n), jnp.float32)
  dxdt = lambda x_t, s: scm.teacher_velocity(denoise, x_t, s, SD)

  def loss(params):
    return scm.scm_objective(F_fn, params, x0, z, t, dxdt, jnp.zeros(n), sigma_data=SD, norm=norm)[0]

  zero = {"a": jnp.zeros(()), "b": jnp.zeros(2)}
  g0 = jax.grad(loss)(zero)
  assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g0)) < 1e-4
  # Perturbed, the gradient is not zero and descent goes back to the exact function.
  params = {"a": jnp.asarray(0.2), "b": jnp.asarray([0.1, -0.1])}
  g = jax.grad(loss)(params)
  assert float(jnp.abs(g["a"])) > 1e-3
  for _ in range(30):
    params = jax.tree.map(lambda p, d: p - 0.02 * d / (jnp.abs(d) + 1e-3), params, jax.grad(loss)(params))
  assert float(jnp.abs(params["a"])) < 0.1 and float(jnp.max(jnp.abs(params["b"]))) < 0.05, params


def test_sct_gradient_vanishes_in_expectation_at_the_exact_consistency_function():
  """sCT's tangent uses the conditional velocity cos t z - sin t x_0; without normalisation g is linear in it,
  so the gradient at the exact f is zero on average (Monte Carlo), and not for a wrong velocity sign."""
  _, _, f = _gaussian()
  F_fn = _param_F(f)
  r = np.random.default_rng(7)
  n = 200_000
  x0 = jnp.asarray(0.3 * r.standard_normal((n, 2)) + [0.4, -0.2], jnp.float32)
  z = jnp.asarray(SD * r.standard_normal((n, 2)), jnp.float32)
  t = jnp.asarray(r.uniform(0.2, 1.3, n), jnp.float32)

  def grad(sign):
    dxdt = lambda x_t, s: sign * (jnp.cos(s)[:, None] * z - jnp.sin(s)[:, None] * x0)
    loss = lambda p: scm.scm_objective(F_fn, p, x0, z, t, dxdt, jnp.zeros(n), sigma_data=SD, norm="none",
                                       prior_weighting=False)[0]
    return jax.grad(loss)({"a": jnp.zeros(()), "b": jnp.zeros(2)})

  right, wrong = grad(1.0), grad(-1.0)
  scale = float(jnp.max(jnp.abs(jnp.concatenate([wrong["a"][None], wrong["b"]]))))
  assert scale > 1e-2
  assert float(jnp.max(jnp.abs(jnp.concatenate([right["a"][None], right["b"]])))) < 0.05 * scale


def test_trigflow_sampler_with_the_exact_function_is_exact():
  _, _, f = _gaussian()
  z = jax.random.normal(jax.random.key(0), (4, 2))
  t_max = float(np.arctan(80.0 / SD))
  one = scm.trigflow_sampler(f, z, [t_max])
  np.testing.assert_allclose(one, f(SD * z, jnp.full((4,), t_max)), rtol=1e-6)
  two = scm.trigflow_sampler(f, z, [t_max, 1.0], jax.random.key(1))
  noise = jax.random.normal(jax.random.fold_in(jax.random.key(1), 0), (4, 2))
  np.testing.assert_allclose(two, f(np.cos(1.0) * one + np.sin(1.0) * SD * noise, jnp.full((4,), 1.0)), rtol=1e-5)


_CACHE = {}


def _setup(name, **network):
  key = (name, tuple(sorted(network.items())))
  if key not in _CACHE:
    config = importlib.import_module(f"configs.{name}").get_config("toy2d,smoke")
    config.network.update(network)
    config.objective[name].tangent_warmup_steps = 4
    dataset = data_lib.build(config.data)
    teacher = teachers.build(config.teacher, dataset, config.network)
    objective = objectives.build(config, dataset.spec)
    state = jax.jit(objective.init)(jax.random.key(0), example_batch(dataset.spec), teacher)
    _CACHE[key] = (dataset, teacher, objective, state, jax.jit(objective.train_step))
  return _CACHE[key]


@pytest.mark.parametrize("name", ["sct", "scd"])
def test_objective_steps_and_samples_on_toy2d(name):
  dataset, teacher, objective, state, step = _setup(name)
  it = dataset.iterator()
  warmups = []
  for _ in range(3):
    state, metrics = step(state, next(it), teacher)
    warmups.append(float(metrics["generator/tangent_warmup"]))
  assert warmups == [0.0, 0.25, 0.5]
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert float(metrics["weighting/grad_norm"]) > 0.0
  for steps in (1, 2):
    out = jax.jit(objective.sample, static_argnums=(2, 4))(state, jax.random.key(1), 7, None, steps)
    assert out.shape == (7, 2) and bool(jnp.all(jnp.isfinite(out)))


def test_remat_and_bf16_steps():
  dataset, teacher, _, state, step = _setup("scd")
  batch = next(dataset.iterator())
  ref, ref_m = step(state, batch, teacher)
  _, _, _, state_r, step_r = _setup("scd", remat="full")
  new, m = step_r(state_r, batch, teacher)
  np.testing.assert_allclose(m["generator/loss"], ref_m["generator/loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), new.params, ref.params)
  _, _, _, state_b, step_b = _setup("scd", dtype="bfloat16")
  _, m = step_b(state_b, batch, teacher)
  assert np.isfinite(float(m["generator/loss"]))


def test_weighting_role_is_built_by_the_registry_from_the_objective_section():
  """The `weighting` role (kind 'time_weighting') has objective.<name>.weighting_features Fourier features and
  starts at w = 0 (zero-initialised output layer), so the loss starts as the plain prior-weighted one."""
  config = importlib.import_module("configs.sct").get_config("toy2d,smoke")
  config.objective.sct.weighting_features = 16
  networks = objectives.networks_for(config, data_lib.build(config.data).spec)
  assert set(networks) == {"generator", "weighting"}
  params = networks["weighting"].init(jax.random.key(0), jnp.zeros((3,)))
  assert [p.shape for p in jax.tree.leaves(params)] == [(1,), (16, 1)]
  np.testing.assert_array_equal(networks["weighting"].apply(params, jnp.linspace(-2.0, 2.0, 3)), 0.0)
