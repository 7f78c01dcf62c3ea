"""Progressive distillation: the cosine schedule, the two-step DDIM target against the VP formulas written out, the
loss weights, the DDIM sampler, and the halving rounds inside one run (teacher handover, optimizer reset, round 0
on the run's teacher, later rounds on the stored one)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import progressive as progressive_config
from gendistill import data as data_lib
from gendistill import objectives
from gendistill import teachers
from gendistill.diffusion import samplers
from gendistill.objectives import progressive as pd
from gendistill.objectives.base import example_batch

LOGSNR = pd.EDM_LOGSNR_RANGE


def _mixture_teacher(shift=0.0):
  means = np.array([[-1.0, 0.5], [1.0, -0.5]]) + shift
  return teachers.gaussian_mixture(np.array([0.3, 0.7]), means, np.stack([0.05 * np.eye(2)] * 2))


def test_cosine_schedule_endpoints_and_sigma():
  u = jnp.linspace(0.0, 1.0, 11)
  lam = samplers.cosine_logsnr(u, -20.0, 20.0)
  np.testing.assert_allclose([lam[0], lam[-1]], [20.0, -20.0], rtol=1e-4)
  assert np.all(np.diff(np.asarray(lam)) < 0)
  np.testing.assert_allclose(samplers.cosine_sigma(u, -20.0, 20.0), np.exp(-np.asarray(lam) / 2), rtol=1e-4)
  # alpha^2 = sigmoid(lambda) is the VP signal level of sigma: alpha = 1/sqrt(1 + sigma^2).
  lo, hi = LOGSNR
  np.testing.assert_allclose(samplers.cosine_sigma(jnp.array([0.0, 1.0]), lo, hi), [0.002, 80.0], rtol=1e-4)


def _vp_teacher(teacher):
  """x_hat(z, lambda) of a denoiser D(y; sigma) in VP form: y = z / alpha, sigma = sigma_vp / alpha."""
  def x_hat(z, lam):
    alpha, sig = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    return np.asarray(teacher.apply_fn(teacher.params, jnp.asarray(z / alpha[:, None], jnp.float32),
                                       jnp.asarray(sig / alpha, jnp.float32)), np.float64)
  return x_hat


def test_two_step_target_equals_the_ddim_result_computed_directly():
  """docs/objectives/trajectory_distillation.md in VP form: z' = alpha' x_hat(z_t) + sigma' eps_hat(z_t), z'' likewise from z',
  x_tilde = (z'' - (sigma''/sigma_t) z_t)/(alpha'' - (sigma''/sigma_t) alpha_t), and x_hat(z') for i = 0."""
  teacher = _mixture_teacher()
  x_hat = _vp_teacher(teacher)
  num_steps, b = 8, 16
  rng = np.random.default_rng(0)
  i = np.arange(b) % num_steps
  x = rng.standard_normal((b, 2))
  eps = rng.standard_normal((b, 2))
  lam = lambda u: np.asarray(samplers.cosine_logsnr(jnp.asarray(u, jnp.float32), *LOGSNR), np.float64)
  a_s = lambda l: np.sqrt(1 / (1 + np.exp(-l)))[:, None]
  s_s = lambda l: np.sqrt(1 / (1 + np.exp(l)))[:, None]
  u = (i + 1) / num_steps
  lt, l1, l2 = lam(u), lam(u - 0.5 / num_steps), lam(u - 1.0 / num_steps)
  z_t = a_s(lt) * x + s_s(lt) * eps
  xh = x_hat(z_t, lt)
  z1 = a_s(l1) * xh + s_s(l1) * (z_t - a_s(lt) * xh) / s_s(lt)
  xh1 = x_hat(z1, l1)
  z2 = a_s(l2) * xh1 + s_s(l2) * (z1 - a_s(l1) * xh1) / s_s(l1)
  frac = s_s(l2) / s_s(lt)
  expect = (z2 - frac * z_t) / (a_s(l2) - frac * a_s(lt))
  expect = np.where((i == 0)[:, None], xh1, expect)

  sigma_t, sigma_mid, sigma_s = pd.levels(jnp.asarray(i), num_steps, *LOGSNR)
  y_t = jnp.asarray(z_t / a_s(lt), jnp.float32)
  teacher_fn = lambda y, s: teacher.apply_fn(teacher.params, y, s)
  got = pd.two_step_target(teacher_fn, y_t, sigma_t, sigma_mid, sigma_s, jnp.asarray(i == 0))
  np.testing.assert_allclose(got, expect, rtol=2e-3, atol=2e-3)
  # The last step (i = 0) takes the teacher's midpoint x_hat itself, exactly (its x_tilde differs by ~1e-3 here).
  np.testing.assert_allclose(np.asarray(got)[i == 0], xh1[i == 0], rtol=1e-5, atol=1e-5)
  # ... and one student DDIM step with x_hat = x_tilde lands where the teacher's two steps land.
  y_s, _ = samplers.ddim_step(lambda y, s: got, y_t, sigma_t, sigma_s)
  keep = i > 0
  np.testing.assert_allclose(np.asarray(y_s)[keep], (z2 / a_s(l2))[keep], rtol=1e-3, atol=1e-3)
  # One teacher step (not two), or the teacher's x_hat at the start, is a different target.
  assert np.max(np.abs(np.asarray(got) - xh)) > 0.05


def test_loss_weights_truncated_snr_and_v_mse():
  sigma = jnp.asarray([0.1, 1.0, 3.0])
  np.testing.assert_allclose(pd.loss_weight(sigma, "snr_trunc"), [100.0, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(pd.loss_weight(sigma, "snr"), [100.0, 1.0, 1 / 9], rtol=1e-6)
  # v-MSE written out: v = alpha eps - sigma_vp x with eps = (z - alpha x)/sigma_vp, z = alpha y.
  rng = np.random.default_rng(1)
  y, x_pred, x_tgt = (rng.standard_normal((3, 4)) for _ in range(3))
  s = np.asarray(sigma)[:, None]
  alpha, sig = 1 / np.sqrt(1 + s**2), s / np.sqrt(1 + s**2)
  v = lambda xx: alpha * (alpha * y - alpha * xx) / sig - sig * xx
  v_mse = np.mean((v(x_pred) - v(x_tgt)) ** 2, axis=1)
  np.testing.assert_allclose(np.asarray(pd.loss_weight(sigma, "v_mse")) * np.mean((x_pred - x_tgt) ** 2, axis=1),
                             v_mse, rtol=1e-5)
  net = lambda p, yy, ss, labels=None, train=False, rngs=None: jnp.asarray(x_pred, jnp.float32)
  loss, per = pd.student_loss(net, {}, jnp.asarray(y), sigma, jnp.asarray(x_tgt), None, jax.random.key(0))
  np.testing.assert_allclose(per, np.maximum(1 / np.asarray(sigma) ** 2, 1) * np.mean((x_pred - x_tgt) ** 2, 1),
                             rtol=1e-5)


def test_ddim_sampler_matches_manual_steps():
  teacher = _mixture_teacher()
  fn = lambda y, s: teacher.apply_fn(teacher.params, y, s)
  noise = jax.random.normal(jax.random.key(0), (6, 2))
  sig = lambda u: jnp.full((6,), samplers.cosine_sigma(jnp.float32(u), *LOGSNR))
  y1 = noise * jnp.sqrt(1 + sig(1.0)[0] ** 2)
  np.testing.assert_allclose(samplers.ddim_sampler(fn, noise, 1, *LOGSNR), fn(y1, sig(1.0)), rtol=1e-5)
  y_half, _ = samplers.ddim_step(fn, y1, sig(1.0), sig(0.5))
  want = fn(y_half, sig(0.5))
  np.testing.assert_allclose(samplers.ddim_sampler(fn, noise, 2, *LOGSNR), want, rtol=1e-5, atol=1e-6)
  traced = jax.jit(lambda n: samplers.ddim_sampler(fn, noise, n, *LOGSNR))(jnp.int32(2))
  np.testing.assert_allclose(traced, want, rtol=1e-5, atol=1e-6)
  clipped = samplers.ddim_sampler(lambda y, s: 3.0 * jnp.ones_like(y), noise, 2, *LOGSNR, clip_denoised=1.0)
  np.testing.assert_allclose(clipped, np.ones((6, 2)))


def test_round_helpers():
  assert pd.num_rounds(8192, 1) == 13 and pd.num_rounds(64, 4) == 4
  for bad in ((96, 1), (8, 8), (8, 3)):
    with pytest.raises(ValueError, match="power of 2"):
      pd.num_rounds(*bad)
  assert [int(pd.round_of(k, 10, 3)) for k in (0, 9, 10, 29, 30, 100)] == [0, 0, 1, 2, 2, 2]
  assert [int(pd.student_steps(r, 64)) for r in range(6)] == [32, 16, 8, 4, 2, 1]


# ------------------------------------------------------------------------------------------------------------
# The rounds in one run (toy2d smoke: 8 teacher steps -> 1, 2 steps per round, 3 rounds).

_RUN = {}


def _run():
  if not _RUN:
    config = progressive_config.get_config("toy2d,smoke")
    config.objective.progressive.init = "random"
    dataset = data_lib.build(config.data)
    teacher = teachers.build(config.teacher, dataset, config.network)
    objective = objectives.build(config, dataset.spec)
    state = jax.jit(objective.init)(jax.random.key(0), example_batch(dataset.spec), teacher)
    step = jax.jit(objective.train_step)
    it = dataset.iterator()
    batches, states, metrics = [], [jax.tree.map(jnp.array, state)], []
    for _ in range(6):
      batches.append(next(it))
      state, m = step(state, batches[-1], teacher)
      states.append(jax.tree.map(jnp.array, state))
      metrics.append(jax.device_get(m))
    _RUN.update(config=config, objective=objective, teacher=teacher, step=step, states=states, metrics=metrics,
                batches=batches)
  return _RUN


def _same(a, b):
  return all(bool(jnp.all(x == y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_rounds_hand_the_student_over_as_the_next_teacher():
  run = _run()
  states, metrics = run["states"], run["metrics"]
  assert [int(m["generator/round"]) for m in metrics] == [0, 0, 1, 1, 2, 2]
  assert [int(m["generator/student_steps"]) for m in metrics] == [4, 4, 2, 2, 1, 1]
  assert [float(m["generator/new_round"]) for m in metrics] == [0, 1, 0, 1, 0, 0]
  student = lambda k: states[k].params["generator"]
  teacher_of = lambda k: states[k].extra["teacher"]
  # After the steps of round 1 (steps 1-2) the round-2 teacher is the round-1 student ...
  assert _same(teacher_of(2), student(2))
  # ... and stays fixed while the round-2 student trains on (steps 3-4), then is replaced by that student.
  assert _same(teacher_of(3), student(2)) and not _same(student(3), student(2))
  assert _same(teacher_of(4), student(4))
  # The last round does not hand over at its end.
  assert _same(teacher_of(6), student(4)) and not _same(student(6), student(4))
  # Within round 1 the stored copy is untouched (round 1 distils the run's own teacher).
  assert _same(teacher_of(1), teacher_of(0))


def test_a_new_round_starts_a_fresh_optimizer_state():
  states = _run()["states"]
  counts = lambda k: [int(x) for x in jax.tree.leaves(states[k].opt_state["generator"]) if jnp.ndim(x) == 0]
  assert set(counts(1)) == {1} and set(counts(2)) == {0} and set(counts(3)) == {1} and set(counts(4)) == {0}
  adam_mu = lambda k: [x for x in jax.tree.leaves(states[k].opt_state["generator"]) if jnp.ndim(x) > 0]
  assert all(bool(jnp.all(x == 0)) for x in adam_mu(2)) and any(bool(jnp.any(x != 0)) for x in adam_mu(1))


def test_only_round_one_uses_the_runs_teacher():
  run = _run()
  step, states, batches = run["step"], run["states"], run["batches"]
  other = _mixture_teacher(shift=0.3)
  # Round 1 (step 0): another teacher gives another update.
  a, _ = step(jax.tree.map(jnp.array, states[0]), batches[0], run["teacher"])
  b, _ = step(jax.tree.map(jnp.array, states[0]), batches[0], other)
  assert not _same(a.params["generator"], b.params["generator"])
  # Round 2 (step 2) distils the stored teacher: the run's teacher no longer matters.
  a, _ = step(jax.tree.map(jnp.array, states[2]), batches[2], run["teacher"])
  b, _ = step(jax.tree.map(jnp.array, states[2]), batches[2], other)
  assert _same(a.params["generator"], b.params["generator"])


def test_sample_defaults_to_the_trained_rounds_steps():
  run = _run()
  objective, states = run["objective"], run["states"]
  sample = jax.jit(objective.sample, static_argnums=(2, 4))
  for k, steps in ((2, 4), (3, 2), (6, 1)):     # after step k the last trained round's student has `steps` steps
    default = sample(states[k], jax.random.key(1), 5, None, None)
    np.testing.assert_allclose(default, sample(states[k], jax.random.key(1), 5, None, steps), rtol=1e-6)
    assert default.shape == (5, 2) and bool(jnp.all(jnp.isfinite(default)))


def test_sample_with_the_previous_rounds_steps_uses_the_previous_rounds_student():
  run = _run()
  objective, states = run["objective"], run["states"]
  sample = jax.jit(objective.sample, static_argnums=(2, 4))
  ddim = lambda params, steps: samplers.ddim_sampler(
      lambda y, s: objective.apply_fn(params, y, s, None), jax.random.normal(jax.random.split(jax.random.key(1))[1],
                                                                             (5, 2)), steps, logsnr_min=LOGSNR[0],
      logsnr_max=LOGSNR[1])
  student, kept = states[6].params["generator"], states[6].extra["teacher"]
  assert not _same(student, kept)
  # After the last round (1 step): 2 steps is the round-2 student (kept as the last round's teacher) ...
  np.testing.assert_allclose(sample(states[6], jax.random.key(1), 5, None, 2), ddim(kept, 2), rtol=1e-5, atol=1e-6)
  assert not np.allclose(ddim(kept, 2), ddim(student, 2), atol=1e-3)
  # ... 1 step and steps of no kept round run the current student.
  for steps in (1, 4):
    np.testing.assert_allclose(sample(states[6], jax.random.key(1), 5, None, steps), ddim(student, steps),
                               rtol=1e-5, atol=1e-6)
  # In round 1 (after step 1) the stored copy is the run's starting point, not a student: never sampled.
  np.testing.assert_allclose(sample(states[1], jax.random.key(1), 5, None, 8),
                             ddim(states[1].params["generator"], 8), rtol=1e-5, atol=1e-6)


def test_learning_rate_anneals_linearly_within_a_round():
  """Adam on a constant gradient moves by lr per step; the anneal scales that by 1 - count/steps_per_round."""
  cfg = progressive_config.get_config("toy2d,smoke").objective.progressive
  tx = pd.make_optimizer(cfg)
  lr, per_round = cfg.optimizer.lr, cfg.steps_per_round
  params = {"w": jnp.zeros((3,))}
  state = tx.init(params)
  moves = []
  for _ in range(per_round + 1):
    update, state = tx.update({"w": jnp.full((3,), 0.01)}, state, params)
    moves.append(float(-update["w"][0]))
  np.testing.assert_allclose(moves, [lr * max(1 - c / per_round, 0) for c in range(per_round + 1)], rtol=1e-3)
