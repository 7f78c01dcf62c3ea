"""Consistency models (cd, ct, ict, ect): the boundary condition, the CD loss on the exact flow map of a Gaussian,
stop-gradient and order of the two branches, CT's shared noise, the curricula against their formulas, the target
EMA after a real step, the multistep sampler, and one real step of each objective on a tiny MLP."""
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from gendistill import data as data_lib
from gendistill import nets
from gendistill import objectives
from gendistill import teachers
from gendistill.diffusion import samplers
from gendistill.objectives import consistency as cm
from gendistill.objectives.base import example_batch

METHODS = ("cd", "ct", "ict", "ect")
_CACHE = {}


def _setup(name, arg="toy2d,smoke", **overrides):
  """(config, dataset, teacher, objective, state, jitted step), built once per (name, arg, overrides)."""
  key = (name, arg, tuple(sorted(overrides.items())))
  if key not in _CACHE:
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    config.objective[name].update(overrides)
    dataset = data_lib.build(config.data)
    teacher = teachers.build(config.teacher, dataset, config.network)
    objective = objectives.build(config, dataset.spec)
    state = jax.jit(objective.init)(jax.random.key(0), example_batch(dataset.spec), teacher)
    _CACHE[key] = (config, dataset, teacher, objective, state, jax.jit(objective.train_step))
  return _CACHE[key]


def _perturbed(params, seed=0, scale=0.3):
  """Random weights of a fresh MLP perturbed, so that its near-zero output layer does not hide the network."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


# ------------------------------------------------------------------------------------------------------------
# The parameterisation.


@pytest.mark.parametrize("sigma_min", [0.002, 0.003])
def test_f_at_sigma_min_is_exactly_the_identity(sigma_min):
  config, dataset, _, _, state, _ = _setup("cd")
  net = nets.Network.from_module(nets.build_denoiser(config.network, dataset.spec))
  f = cm.preconditioned_apply_fn(net, "consistency", 0.5, sigma_min)
  params = _perturbed(state.params["generator"])
  x = 3.0 * jax.random.normal(jax.random.key(1), (16, 2))
  out = f(params, x, jnp.full((16,), sigma_min, jnp.float32))
  np.testing.assert_array_equal(out, x)
  # Away from sigma_min the network contributes (so the identity above is the boundary condition at work).
  assert float(jnp.max(jnp.abs(f(params, x, jnp.full((16,), 2 * sigma_min)) - x))) > 1e-4
  # The 'edm' coefficients (ECT's training network) are not the identity at sigma_min.
  g = cm.preconditioned_apply_fn(net, "edm", 0.5, sigma_min)
  assert float(jnp.max(jnp.abs(g(params, x, jnp.full((16,), sigma_min)) - x))) > 0


def test_objective_sampler_network_obeys_the_boundary_condition():
  for name in ("cd", "ect"):
    config, _, _, objective, state, _ = _setup(name)
    m = config.objective[name].sigma_min
    x = jax.random.normal(jax.random.key(2), (8, 2))
    out = objective.apply_fn(_perturbed(state.params["generator"]), x, jnp.full((8,), m, jnp.float32))
    np.testing.assert_array_equal(out, x)


def test_student_parameters_are_the_denoisers_parameters():
  """The consistency network is the teacher's Denoiser under other coefficients: same tree, so CD and ECT can
  start from the teacher, and with 'edm' coefficients it computes exactly the Denoiser."""
  config, dataset, _, _, state, _ = _setup("ect")
  net = nets.Network.from_module(nets.build_denoiser(config.network, dataset.spec))
  params = _perturbed(state.params["generator"])
  x, sigma = jax.random.normal(jax.random.key(3), (8, 2)), jnp.linspace(0.01, 50.0, 8)
  g = cm.preconditioned_apply_fn(net, "edm", 0.5)
  np.testing.assert_allclose(g(params, x, sigma), net.apply(params, x, sigma), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# The loss.

S, DIM, M = 0.7, 4, 0.002


def _flow_map(params, x, sigma, labels=None, train=False, rngs=None):
  """The exact PF-ODE flow map of N(0, s^2 I) from sigma to sigma_min: x sqrt(s^2 + m^2)/sqrt(s^2 + sigma^2)."""
  del labels, train, rngs
  s = params["s"]
  return x * (jnp.sqrt(s**2 + M**2) / jnp.sqrt(s**2 + sigma**2))[:, None]


def _gaussian_pairs(num_scales=400, repeats=2):
  n = jnp.tile(jnp.arange(num_scales - 1), repeats)
  t, r = cm.karras_sigma(n, num_scales), cm.karras_sigma(n + 1, num_scales)
  x = S * jax.random.normal(jax.random.key(0), (n.shape[0], DIM))
  z = jax.random.normal(jax.random.key(1), x.shape)
  return x, z, t, r


def test_cd_loss_is_zero_for_the_exact_flow_map_of_a_gaussian():
  """Data N(0, s^2 I), its exact denoiser as the teacher, and f = the exact flow map: the teacher's Heun step lands
  on the same trajectory, so the loss vanishes (up to Heun's truncation error, made small by a fine grid); a flow
  map of the wrong Gaussian, or an Euler teacher step, gives a loss orders of magnitude larger."""
  teacher = teachers.gaussian_mixture(np.ones(1), np.zeros((1, DIM)), (S**2 * np.eye(DIM))[None])
  teacher_fn = lambda y, sigma: teacher.apply_fn(teacher.params, y, sigma)
  x, z, t, r = _gaussian_pairs()
  loss = lambda s, solver="heun": float(cm.consistency_loss(
      _flow_map, {"s": jnp.float32(s)}, None, x, None, z, t, r, jax.random.key(2), teacher_fn=teacher_fn,
      solver=solver)[0])
  exact, wrong = loss(S), loss(1.1 * S)
  assert exact < 1e-12, exact
  assert exact < 1e-4 * wrong, (exact, wrong)
  assert exact < 1e-2 * loss(S, "euler")
  # The flow map is a consistency function: f(x, sigma_min) = x.
  np.testing.assert_allclose(_flow_map({"s": S}, x, jnp.full(x.shape[:1], M)), x, rtol=1e-6)


def _affine(params, x, sigma, labels=None, train=False, rngs=None):
  del labels, train, rngs
  return params["a"] * x + sigma[:, None] * params["b"]


def test_gradient_flows_only_through_the_online_branch_at_the_larger_noise_level():
  x, z, t, r = (v[:12] for v in _gaussian_pairs(num_scales=18))
  params = {"a": jnp.float32(0.8), "b": jnp.linspace(-0.5, 0.5, DIM)}
  loss = lambda p, target=None: cm.consistency_loss(_affine, p, target, x, None, z, t, r, jax.random.key(0))[0]
  grad = jax.grad(loss)(params)

  # The written-out gradient of mean_b mean_pix (f(x_t, t) - sg[f(x_r, r)])^2 with x_r = x + r z.
  x_t, x_r = x + t[:, None] * z, x + r[:, None] * z
  diff = _affine(params, x_t, t) - _affine(params, x_r, r)
  expect_a = np.mean(np.sum(2 * diff * x_t, axis=1) / DIM)
  expect_b = np.mean(2 * diff * t[:, None] / DIM, axis=0)
  np.testing.assert_allclose(grad["a"], expect_a, rtol=1e-5)
  np.testing.assert_allclose(grad["b"], expect_b, rtol=1e-5, atol=1e-7)
  # Target = a frozen copy of the online parameters (iCT's sg[theta]): the same gradient.
  frozen = jax.tree.map(jnp.array, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jax.grad(loss)(params, frozen), grad)

  # Without the stop-gradient, or with the branches' noise levels swapped, the gradient is different.
  def no_sg(p):
    return jnp.mean(jnp.mean((_affine(p, x_t, t) - _affine(p, x_r, r)) ** 2, axis=1))
  def swapped(p):
    return jnp.mean(jnp.mean((_affine(p, x_r, r) - jax.lax.stop_gradient(_affine(p, x_t, t))) ** 2, axis=1))
  for other in (jax.grad(no_sg)(params), jax.grad(swapped)(params)):
    assert abs(float(other["a"] - grad["a"])) > 1e-3 * abs(float(grad["a"]))


def test_ct_target_uses_the_same_noise_as_its_input():
  """f(y, s) = (y - x)/s recovers the noise of its input: the CT loss is zero exactly when x_r = x + r z reuses the
  z of x_t = x + t z."""
  x, z, t, r = _gaussian_pairs(num_scales=18)
  recover = lambda p, y, sigma, labels=None, train=False, rngs=None: (y - x) / sigma[:, None]
  loss, per = cm.consistency_loss(recover, {}, None, x, None, z, t, r, jax.random.key(0))
  assert float(jnp.max(per)) < 1e-9, per
  # The same f under CD's pairing (a teacher step instead of the data's noise) does not vanish.
  teacher = teachers.gaussian_mixture(np.ones(1), np.zeros((1, DIM)), (S**2 * np.eye(DIM))[None])
  cd_loss, _ = cm.consistency_loss(recover, {}, None, x, None, z, t, r, jax.random.key(0),
                                   teacher_fn=lambda y, s: teacher.apply_fn(teacher.params, y, s))
  assert float(cd_loss) > 1e-3


def test_distances_and_weights():
  d = jnp.asarray([[3.0, 4.0], [1.0, -1.0]])
  np.testing.assert_allclose(cm.distance(d, "l2"), [12.5, 1.0])
  np.testing.assert_allclose(cm.distance(d, "l1"), [3.5, 1.0])
  c = 0.5 * math.sqrt(2)
  np.testing.assert_allclose(cm.distance(d, "pseudo_huber", 0.5), [math.sqrt(25 + c**2) - c, math.sqrt(2 + c**2) - c],
                             rtol=1e-6)
  np.testing.assert_allclose(cm.distance(d, "pseudo_huber", 0.0), [5.0, math.sqrt(2)], rtol=1e-6)
  # ECT's c = 0 has a finite gradient even at d = 0.
  assert np.all(np.isfinite(jax.grad(lambda v: cm.distance(v, "pseudo_huber", 0.0).sum())(jnp.zeros((2, 2)))))
  t, r = jnp.asarray([2.0, 0.5]), jnp.asarray([1.5, 0.0])
  np.testing.assert_allclose(cm.pair_weight(t, r, "inverse_gap"), [2.0, 2.0])
  np.testing.assert_allclose(cm.pair_weight(t, r, "edm", 0.5), (t**2 + 0.25) / (0.25 * t**2), rtol=1e-6)


def test_ect_target_is_the_data_where_r_is_zero():
  x, z, _, _ = _gaussian_pairs(num_scales=4, repeats=1)
  t, r = jnp.full((3,), 0.5), jnp.asarray([0.0, 0.2, 0.0])
  x, z = x[:3], z[:3]
  # f = the identity network: the online output is x_t; the target is x (r = 0) or x_r.
  ident = lambda p, y, sigma, labels=None, train=False, rngs=None: y
  _, per = cm.consistency_loss(ident, {}, None, x, None, z, t, r, jax.random.key(0), distance_kind="l2",
                               data_target_at_zero=True)
  want = np.mean((np.asarray(t)[:, None] * z - np.where(np.asarray(r)[:, None] > 0, np.asarray(r)[:, None] * z, 0))
                 ** 2, axis=1)
  np.testing.assert_allclose(per, want, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Curricula.


def test_ct_schedule_matches_its_formula():
  total, s0, s1, mu0 = 800_000, 2, 150, 0.9
  for k in (0, 1234, 200_000, 555_555, 800_000):
    n_prime = max(math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1), 1)
    num, mu = cm.ct_schedule(k, total, s0, s1, mu0)
    assert int(num) == n_prime + 1, k
    np.testing.assert_allclose(mu, math.exp(s0 * math.log(mu0) / n_prime), rtol=1e-6)
    _, mu_paper = cm.ct_schedule(k, total, s0, s1, mu0, paper_mu=True)
    np.testing.assert_allclose(mu_paper, math.exp(s0 * math.log(mu0) / (n_prime + 1)), rtol=1e-6)
  assert int(cm.ct_schedule(0, total)[0]) == 2 and abs(float(cm.ct_schedule(0, total)[1]) - 0.81) < 1e-6
  assert int(cm.ct_schedule(total, total)[0]) == 151


def test_ict_doubling_schedule_matches_its_formula():
  # K = 400k, s0 = 10, s1 = 1280: K' = floor(400000 / (log2(128) + 1)) = 50000.
  expect = {0: 11, 49_999: 11, 50_000: 21, 100_000: 41, 349_999: 641, 350_000: 1281, 399_999: 1281, 10**6: 1281}
  for k, n in expect.items():
    assert int(cm.ict_num_scales(k, 400_000, 10, 1280)) == n, k


def test_ict_pair_probabilities_are_the_discretised_lognormal():
  num, max_scales = 21, 41
  log_p = np.asarray(cm.ict_pair_log_probs(num, max_scales, 0.002, 80.0, 7.0, -1.1, 2.0))
  sig = np.asarray([(80 ** (1 / 7) + i / (num - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(num)])
  cdf = erf((np.log(sig) + 1.1) / (math.sqrt(2) * 2.0))
  mass = cdf[:-1] - cdf[1:]
  np.testing.assert_allclose(np.exp(log_p[:num - 1]), mass, rtol=1e-4)
  assert np.all(np.isneginf(log_p[num - 1:]))
  # Sampling follows it: the most likely pair is the one with the most mass.
  idx = np.asarray(jax.random.categorical(jax.random.key(0), jnp.asarray(log_p), shape=(20000,)))
  assert idx.max() < num - 1 and np.bincount(idx).argmax() == mass.argmax()


def test_ect_stage_and_r_match_their_formulas():
  assert [int(cm.ect_stage(k, 25_000)) for k in (0, 24_999, 25_000, 74_999, 75_000)] == [0, 0, 1, 2, 3]
  sigmoid = lambda v: 1 / (1 + math.exp(-v))
  for t, stage in ((0.1, 0), (1.0, 0), (3.0, 2), (10.0, 3), (80.0, 7)):
    want = max(t * (1 - 2.0 ** -(stage + 1) * (1 + 8 * sigmoid(-t))), 0.0)
    np.testing.assert_allclose(cm.ect_r(jnp.float32(t), stage, 2.0, 8.0, 1.0), want, rtol=1e-5, atol=1e-7)
  assert float(cm.ect_r(jnp.float32(0.1), 0)) == 0.0       # r clamps at 0: the target is the data


# ------------------------------------------------------------------------------------------------------------
# Targets after a real step.


def _step_once(name, **overrides):
  _, dataset, teacher, _, state, step = _setup(name, **overrides)
  old = jax.tree.map(jnp.array, (state.params, state.extra))
  new, metrics = step(state, next(dataset.iterator()), teacher)
  return old, new, metrics


@pytest.mark.parametrize("name,overrides", [("cd", {"target": "ema", "target_ema": 0.9}), ("ct", {})])
def test_target_parameters_follow_the_configured_ema(name, overrides):
  (old_params, old_extra), new, metrics = _step_once(name, **overrides)
  if name == "cd":
    mu = 0.9
  else:
    config = _setup(name)[0]
    o = config.objective.ct
    mu = float(cm.ct_schedule(0, config.train.num_steps, o.start_scales, o.end_scales, o.start_ema)[1])
  np.testing.assert_allclose(metrics["generator/target_ema"], mu, rtol=1e-6)
  expect = jax.tree.map(lambda t, p: mu * t + (1 - mu) * p, old_extra["target"], new.params["generator"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new.extra["target"], expect)
  # The online parameters moved, and the target lags behind them.
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(old_params["generator"]),
                                                   jax.tree.leaves(new.params["generator"])))
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(new.extra["target"]),
                                                   jax.tree.leaves(new.params["generator"])))


@pytest.mark.parametrize("name", ["ict", "ect", "cd"])
def test_online_target_methods_keep_no_target_parameters(name):
  _, new, metrics = _step_once(name)
  assert "target" not in new.extra and "generator/target_ema" not in metrics


def test_cd_without_a_teacher_is_an_error():
  _, dataset, _, objective, state, _ = _setup("cd")
  with pytest.raises(ValueError, match="needs a teacher"):
    objective.train_step(state, next(dataset.iterator()), None)


# ------------------------------------------------------------------------------------------------------------
# The sampler and the objectives end to end.


def test_consistency_sampler_renoises_from_sigma_min():
  f = lambda x, s: x / (1.0 + s[:, None])
  noise = jax.random.normal(jax.random.key(0), (5, 3))
  rng = jax.random.key(1)
  one = samplers.consistency_sampler(f, noise, (80.0,))
  np.testing.assert_allclose(one, 80 * noise / 81, rtol=1e-6)
  two = samplers.consistency_sampler(f, noise, (80.0, 0.8), rng, renoise_min=0.002)
  z1 = jax.random.normal(jax.random.fold_in(rng, 0), noise.shape)
  np.testing.assert_allclose(two, (80 * noise / 81 + math.sqrt(0.64 - 0.002**2) * z1) / 1.8, rtol=1e-5)
  plain = samplers.consistency_sampler(f, noise, (80.0, 0.8), rng)
  np.testing.assert_allclose(plain, (80 * noise / 81 + 0.8 * z1) / 1.8, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_objective_steps_and_samples_on_toy2d(name):
  _, dataset, teacher, objective, state, step = _setup(name)
  it = dataset.iterator()
  for _ in range(2):
    state, metrics = step(state, next(it), teacher)
  assert int(state.step) == 2 and all(np.isfinite(float(v)) for v in metrics.values()), metrics
  for steps in (None, 2, 3):
    out = jax.jit(objective.sample, static_argnums=(2, 4))(state, jax.random.key(1), 7, None, steps)
    assert out.shape == (7, 2) and bool(jnp.all(jnp.isfinite(out)))
  assert objective.export_role == "generator"
  assert cm.sample_sigmas(_setup(name)[0].objective[name], 3)[-1] > _setup(name)[0].objective[name].sigma_min


def test_squared_distance_fits_the_mean_of_a_random_target_and_the_norm_a_median():
  """Why the toy presets of ect/ict use 'l2': with a target that is random given the input, the mean of squares is
  stationary at the target's mean, the L2 norm (pseudo-Huber with c = 0) at its geometric median instead."""
  rng = np.random.default_rng(0)
  # A skewed 2-D target: most mass at one point, a little far away (two modes behind one input).
  y = np.concatenate([rng.normal(0.0, 0.05, (900, 2)), rng.normal(4.0, 0.05, (100, 2))]).astype(np.float32)
  mean = jnp.asarray(y.mean(0))

  def grad_at(a, kind, c=0.0):
    return jax.grad(lambda a: jnp.mean(cm.distance(a[None] - jnp.asarray(y), kind, c)))(a)

  np.testing.assert_allclose(grad_at(mean, "l2"), 0.0, atol=1e-5)
  assert float(jnp.linalg.norm(grad_at(mean, "pseudo_huber"))) > 0.5   # the norm pulls the mean back ...
  median = jnp.zeros(2)
  for _ in range(200):                                                # ... to the geometric median (Weiszfeld)
    w = 1.0 / jnp.maximum(jnp.linalg.norm(jnp.asarray(y) - median, axis=1), 1e-6)
    median = jnp.sum(w[:, None] * y, 0) / jnp.sum(w)
  assert float(jnp.linalg.norm(grad_at(median, "pseudo_huber"))) < 0.05
  assert float(jnp.linalg.norm(median - mean)) > 0.3
