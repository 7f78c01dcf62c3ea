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
from gendistill.diffusion import guidance
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
  # The optional clip of the normaliser (toy presets): samples whose w is below it get w = weight_min.
  floor = float(np.median(w))
  clipped = jax.grad(lambda x: dmd.dm_objective(x, sigma, n, real_fn, fake_fn, weight_min=floor))(x)
  np.testing.assert_allclose(clipped, (y_f - y_r) / jnp.maximum(w, floor)[:, None] / x.size, rtol=1e-5, atol=1e-8)
  assert not np.allclose(clipped, grad)


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


# ------------------------------------------------------------------------------------------------------------
# The objectives on a tiny MLP and the analytic teacher (toy2d smoke presets).

OBJECTIVES = ("sid", "sida", "diff_instruct", "dmd", "dmd2", "fdistill")


_CACHE = {}


def _setup(name, arg="toy2d,smoke", **overrides):
  """(config, dataset, teacher, objective, state, jitted train_step), built once per (name, arg, overrides):
  compiling the steps is most of this file's time."""
  key = (name, arg, tuple(sorted(overrides.items())))
  if key not in _CACHE:
    import importlib  # pylint: disable=g-import-not-at-top
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    for path, value in overrides.items():
      node = config.objective[name]
      *parts, leaf = path.split(".")
      for part in parts:
        node = node[part]
      node[leaf] = value
    dataset = data_lib.build(config.data)
    teacher = teachers.build(config.teacher, dataset, config.network)
    objective = objectives.build(config, dataset.spec)
    state = jax.jit(objective.init)(jax.random.key(0), example_batch(dataset.spec), teacher)
    _CACHE[key] = (config, dataset, teacher, objective, state, jax.jit(objective.train_step))
  return _CACHE[key]


def _network_teacher(objective, state, seed=0):
  """A teacher with the students' network and random weights (perturbed so that the near-zero output layer of a
  fresh MLP does not make every network nearly the identity), and the state with its fake score set to it."""
  leaves, tree = jax.tree.flatten(state.params["fake_score"])
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  state = state.replace(params={**state.params, "fake_score": jax.tree.map(jnp.array, params)})
  return teachers.Teacher(params=params, apply_fn=objective.apply_fn), state


def _changed(a, b):
  return any(bool(jnp.any(x != y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# SiD and Diff-Instruct run with a network teacher and a frozen fake score equal to it (lr 0), so that the same
# compiled step also serves the zero-gradient test below (compiling a step is most of this file's time; a
# teacher with another apply function is another compilation).
_FROZEN_FAKE = {"fake_score_optimizer.lr": 0.0}


def _default_setup(name):
  if name not in ("sid", "diff_instruct"):
    return _setup(name)
  config, dataset, _, objective, state, step = _setup(name, **_FROZEN_FAKE)
  teacher, state = _network_teacher(objective, state)
  return config, dataset, teacher, objective, state, step


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_steps_and_samples_on_toy2d(name):
  _, dataset, teacher, objective, state, step = _default_setup(name)
  it = dataset.iterator()
  for _ in range(2):
    state, metrics = step(state, next(it), teacher)
  assert int(state.step) == 2
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert {"generator/loss", "fake_score/loss"} <= set(metrics)
  out = jax.jit(objective.sample, static_argnums=2)(state, jax.random.key(1), 7)
  assert out.shape == (7, 2) and bool(jnp.all(jnp.isfinite(out)))
  assert objective.export_role == "generator"


@pytest.mark.parametrize("name", ["diff_instruct", "sid"])
def test_generator_gradient_is_zero_when_the_fake_score_equals_the_teacher(name):
  """Through a whole train_step: fake score = teacher (the same network, frozen) -> no generator gradient:
  exactly 0 for Diff-Instruct (stop-gradiented network outputs; DMD is checked on its loss above), 0 up to
  float rounding for SiD (two backward passes through equal networks cancel)."""
  _, dataset, teacher, objective, state, step = _default_setup(name)
  batch = next(dataset.iterator())
  new, metrics = step(state, batch, teacher)
  assert float(metrics["generator/updated"]) == 1.0
  # A different teacher gives a gradient (the check is not vacuous).
  other, _ = _network_teacher(objective, state, seed=1)
  _, other_metrics = step(state, batch, other)
  assert float(other_metrics["generator/grad_norm"]) > 1e-2
  if name == "sid":
    assert float(metrics["generator/grad_norm"]) < 1e-5 * float(other_metrics["generator/grad_norm"])
  else:
    assert float(metrics["generator/grad_norm"]) == 0.0
    jax.tree.map(np.testing.assert_array_equal, new.params["generator"], state.params["generator"])


def test_students_start_as_copies_of_a_matching_teacher():
  _, dataset, _, objective, state, _ = _default_setup("sid")
  teacher, _ = _network_teacher(objective, state)
  fresh = objective.init(jax.random.key(3), example_batch(dataset.spec), teacher)
  for role in ("generator", "fake_score"):
    jax.tree.map(np.testing.assert_array_equal, fresh.params[role], teacher.params)
  jax.tree.map(np.testing.assert_array_equal, fresh.ema["generator"], teacher.params)


def test_ttur_generator_changes_once_in_r_steps_while_fake_score_and_critic_change_every_step():
  # The few-step preset keeps DMD2's TTUR (the one-step toy preset updates G every step): G on steps 0, 5, 10, ...
  config, dataset, teacher, objective, state, step = _setup("dmd2", arg="toy2d,smoke,fewstep")
  r = config.objective.dmd2.generator_every
  assert r == 5
  it = dataset.iterator()
  state, _ = step(state, next(it), teacher)   # step 0 (its learning rates are 0: the warm-ups start at 0)
  changes = {"generator": 0, "fake_score": 0, "critic": 0}
  for i in range(1, r + 1):
    new, metrics = step(state, next(it), teacher)
    for role in changes:
      changes[role] += _changed(state.params[role], new.params[role])
    if i < r:   # critic (guidance) steps: the generator is untouched, bit for bit
      jax.tree.map(np.testing.assert_array_equal, new.params["generator"], state.params["generator"])
      jax.tree.map(np.testing.assert_array_equal, new.opt_state["generator"], state.opt_state["generator"])
    assert float(metrics["generator/updated"]) == float(i == r)
    state = new
  assert changes == {"generator": 1, "fake_score": r, "critic": r}


def test_sida_warm_up_freezes_the_generator_then_turns_the_gan_term_on():
  # The smoke preset: batch 8, generator_start 16 images (G from step 3 on, when 24 > 16 images were seen) and
  # gan_start 24 images (the GAN term from step 4 on).
  _, dataset, teacher, objective, state, step = _setup("sida")
  it = dataset.iterator()
  updated, gan_on = [], []
  for _ in range(5):
    new, metrics = step(state, next(it), teacher)
    updated.append(_changed(state.params["generator"], new.params["generator"]))
    assert _changed(state.opt_state["generator"], new.opt_state["generator"]) == updated[-1]
    gan_on.append(float(metrics["generator/gan_on"]))
    assert _changed(state.params["fake_score"], new.params["fake_score"])
    state = new
  assert updated == [False, False, False, True, True]
  assert gan_on == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_fdistill_with_reverse_kl_takes_the_dmd2_step():
  # Both without the toy presets' regression loss: this compares the distribution-matching and GAN terms.
  no_regression = {"regression_weight": 0.0, "regression_pairs": 0}
  _, dataset, teacher, _, dmd2_state, dmd2_step = _setup("dmd2", **no_regression)
  _, _, _, _, f_state, f_step = _setup("fdistill", divergence="reverse_kl", gen_gan_weight=3e-3, **no_regression)
  jax.tree.map(np.testing.assert_array_equal, dmd2_state.params, f_state.params)
  batch = next(dataset.iterator())
  s1, m1 = dmd2_step(dmd2_state, batch, teacher)
  s2, m2 = f_step(f_state, batch, teacher)
  np.testing.assert_allclose(m2["generator/grad_norm"], m1["generator/grad_norm"], rtol=1e-5)
  np.testing.assert_allclose(m2["generator/dm_loss"], m1["generator/dm_loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s2.params, s1.params)


def test_dmd_regression_pairs_are_the_teachers_heun_samples():
  config, dataset, teacher, _, state, _ = _setup("dmd")
  from gendistill.diffusion import samplers  # pylint: disable=g-import-not-at-top
  z = state.extra["reg_z"]
  expect = samplers.heun_sampler(teacher.denoise_fn(), z, num_steps=config.sampler.num_steps,
                                 sigma_max=config.sampler.sigma_max)
  np.testing.assert_allclose(state.extra["reg_y"], expect, rtol=1e-4, atol=1e-5)
  del dataset


def test_dmd2_few_step_generator_backward_simulation_and_sampling():
  _, dataset, teacher, objective, state, step = _setup("dmd2", arg="toy2d,smoke,fewstep")
  state, metrics = step(state, next(dataset.iterator()), teacher)
  assert np.isfinite(float(metrics["generator/loss"]))
  sample = jax.jit(objective.sample, static_argnums=(2, 4))
  for steps in (1, 4):
    assert sample(state, jax.random.key(0), 5, None, steps).shape == (5, 2)
  z = jnp.ones((3, 2))
  fn = lambda p, x, s, labels=None, train=False, rngs=None: 0.5 * x
  x0, s0 = score_common.backward_simulation(fn, None, z, (80.0, 10.0, 1.0), None, jax.random.key(0), 0)
  np.testing.assert_allclose(x0, 80.0 * z)
  assert float(s0) == 80.0
  x2, s2 = score_common.backward_simulation(fn, None, z, (80.0, 10.0, 1.0), None, jax.random.key(0), 2)
  assert float(s2) == 1.0 and x2.shape == z.shape


def test_guided_apply_is_cfg_and_shares_one_pair_of_calls_for_several_scales():
  calls = []

  def net(params, x, sigma, labels=None, train=False, rngs=None):
    calls.append(x.shape[0])
    lab = 0.0 if labels is None else jnp.sum(labels, axis=1, keepdims=True)
    return params * x + lab * sigma[:, None]

  x, sigma = jnp.ones((3, 2)), jnp.array([1.0, 2.0, 3.0])
  labels = jnp.eye(3)
  cond, uncond = net(2.0, x, sigma, labels), net(2.0, x, sigma, jnp.zeros_like(labels))
  calls.clear()
  out2, out3 = guidance.guided_apply(net, 2.0, x, sigma, labels, (1.5, 3.0))
  assert calls == [6]   # one batched call for both scales
  np.testing.assert_allclose(out2, uncond + 1.5 * (cond - uncond))
  np.testing.assert_allclose(out3, uncond + 3.0 * (cond - uncond))
  np.testing.assert_allclose(guidance.guided_apply(net, 2.0, x, sigma, labels, 1.0), cond)
  np.testing.assert_allclose(guidance.guided_apply(net, 2.0, x, sigma, None, 4.0), 2.0 * x)  # unconditional
