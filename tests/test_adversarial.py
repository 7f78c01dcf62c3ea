"""The shared adversarial pieces (losses, R1, instance noise, critics, DMD2's head), `adversarial` and `add`."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import add as add_config
from configs import adversarial as adversarial_config
from gendistill import data as data_lib
from gendistill import objectives
from gendistill import teachers
from gendistill.nets import discriminator
from gendistill.objectives import adversarial, add, gan
from gendistill.objectives.base import example_batch

REAL = np.array([-3.0, -0.5, 0.0, 0.4, 2.5])
FAKE = np.array([1.5, -2.0, 0.3, -0.1, 0.0, 4.0])


def _softplus(v):
  return np.log1p(np.exp(v))


def test_losses_equal_their_formulas():
  r, f = jnp.asarray(REAL), jnp.asarray(FAKE)
  np.testing.assert_allclose(gan.ns_generator_loss(f), np.mean(-np.log(1 / (1 + np.exp(-FAKE)))), rtol=1e-6)
  np.testing.assert_allclose(gan.ns_discriminator_loss(r, f),
                             np.mean(-np.log(1 / (1 + np.exp(-REAL)))) + np.mean(-np.log(1 - 1 / (1 + np.exp(-FAKE)))),
                             rtol=1e-6)
  np.testing.assert_allclose(gan.ns_discriminator_loss(r, f), np.mean(_softplus(-REAL)) + np.mean(_softplus(FAKE)),
                             rtol=1e-6)
  np.testing.assert_allclose(gan.hinge_generator_loss(f), -np.mean(FAKE), rtol=1e-6)
  np.testing.assert_allclose(gan.hinge_discriminator_loss(r, f),
                             np.mean(np.maximum(0, 1 - REAL)) + np.mean(np.maximum(0, 1 + FAKE)), rtol=1e-6)
  assert float(gan.generator_loss("hinge", f)) == float(gan.hinge_generator_loss(f))
  assert float(gan.discriminator_loss("ns", r, f)) == float(gan.ns_discriminator_loss(r, f))
  with pytest.raises(ValueError):
    gan.generator_loss("wgan", f)


def _critic_and_params(shape, label_dim=0):
  critic = (discriminator.ConvCritic(channels=4, channel_mult=(1, 2), hidden=8, label_dim=label_dim,
                                     noise_conditioned=True) if len(shape) == 3
            else discriminator.MLPCritic(hidden=16, depth=2, label_dim=label_dim, noise_conditioned=True))
  x = jax.random.normal(jax.random.key(0), (5,) + shape)
  t = jnp.arange(5.0) * 100
  labels = jnp.eye(3)[jnp.array([0, 1, 2, 0, 1])] if label_dim else None
  return critic, critic.init(jax.random.key(1), x, t, labels), x, t, labels


@pytest.mark.parametrize("shape", [(3,), (4, 4, 2)])
def test_r1_equals_a_directly_computed_gradient_norm(shape):
  critic, params, x, t, labels = _critic_and_params(shape, label_dim=3 if len(shape) == 1 else 0)
  logits_fn = lambda v: critic.apply(params, v, t, labels)
  # One sample at a time: d D(x_i) / d x_i through a batch of one.
  one = lambda v, ti, li: critic.apply(params, v[None], ti[None], None if li is None else li[None])[0]
  grads = jax.jit(jax.vmap(jax.grad(one), in_axes=(0, 0, None if labels is None else 0)))(x, t, labels)
  direct = np.sum(np.reshape(np.asarray(grads) ** 2, (x.shape[0], -1)), axis=1)
  per_sample, penalty, lazy_on, lazy_off = jax.jit(lambda v: (
      gan.r1_per_sample(logits_fn, v), gan.r1_penalty(logits_fn, v, 0.2),
      gan.lazy_r1_penalty(logits_fn, v, 0.2, every=4, step=8),
      gan.lazy_r1_penalty(logits_fn, v, 0.2, every=4, step=9)))(x)
  np.testing.assert_allclose(per_sample, direct, rtol=1e-4)
  np.testing.assert_allclose(penalty, 0.1 * np.mean(direct), rtol=1e-4)
  # Lazy R1: every k steps, scaled by k; nothing otherwise.
  np.testing.assert_allclose(lazy_on, 0.4 * np.mean(direct), rtol=1e-4)
  assert float(lazy_off) == 0.0


def test_r1_of_a_quadratic_critic_and_its_parameter_gradient():
  """D(x) = a sum x^2: ||grad||^2 = 4 a^2 ||x||^2, so d/da of gamma/2 E||grad||^2 = 4 gamma a E||x||^2."""
  x = jax.random.normal(jax.random.key(2), (7, 3))
  penalty = lambda a: gan.r1_penalty(lambda v: a * jnp.sum(v**2, axis=1), x, 0.5)
  sq = float(jnp.mean(jnp.sum(x**2, axis=1)))
  np.testing.assert_allclose(penalty(1.5), 0.25 * 4 * 1.5**2 * sq, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(penalty)(1.5), 4 * 0.5 * 1.5 * sq, rtol=1e-5)


def test_discriminator_objective_adds_the_penalty():
  critic, params, x, t, _ = _critic_and_params((3,))
  logits_fn = lambda v: critic.apply(params, v, t)
  fake = x * 0.3 + 1.0
  loss, metrics = gan.discriminator_objective(logits_fn, x, fake, kind="hinge", r1_gamma=1.0, r1_every=2, step=0)
  expect = gan.hinge_discriminator_loss(logits_fn(x), logits_fn(fake)) + 2 * gan.r1_penalty(logits_fn, x, 1.0)
  np.testing.assert_allclose(loss, expect, rtol=1e-5)
  np.testing.assert_allclose(metrics["critic/real_sign"], jnp.mean(jnp.sign(logits_fn(x))))


def test_diffusion_instance_noise_schedule():
  cfg = gan.instance_noise_config("diffusion")
  num_steps = gan.diffusion_num_steps(jnp.float32(0.5), cfg.t_min, cfg.t_max)
  assert int(num_steps) == 505
  t = jnp.array([0, 1, 7, 505])
  betas = np.linspace(cfg.beta_start, cfg.beta_end, 505)
  want = [1.0] + [np.prod(1 - betas[:k]) for k in (1, 7, 505)]
  np.testing.assert_allclose(gan.diffusion_alpha_bar(t, num_steps, cfg.beta_start, cfg.beta_end, cfg.t_max), want,
                             rtol=1e-4)
  draws = np.asarray(gan.sample_diffusion_t(jax.random.key(0), 20000, jnp.int32(10), cfg.t_max, "priority"))
  assert 0.47 < np.mean(draws == 0) < 0.53 and draws.max() <= 10 and not np.any(draws == 1)
  histogram = np.bincount(draws[draws > 0], minlength=11)[1:] / np.sum(draws > 0)
  np.testing.assert_allclose(histogram, np.arange(10) / np.sum(np.arange(10)), atol=0.015)  # P(t) ∝ t - 1
  x = jnp.ones((4, 3))
  y, t = gan.diffuse(jax.random.key(1), x, jnp.float32(1.0), cfg)
  assert y.shape == x.shape and t.shape == (4,)
  assert gan.diffuse(jax.random.key(1), x, 0.0, gan.instance_noise_config("none"))[0] is x
  # p moves by batch * interval / (kimg * 1000) on update steps only, towards more noise when D(x) > 0 too often.
  p = gan.update_diffusion_p(jnp.float32(0.2), jnp.float32(1.0), 0, cfg, 64)
  np.testing.assert_allclose(p, 0.2 + 64 * 4 / 100_000, rtol=1e-6)
  assert float(gan.update_diffusion_p(jnp.float32(0.2), jnp.float32(1.0), 1, cfg, 64)) == pytest.approx(0.2)
  assert float(gan.update_diffusion_p(jnp.float32(0.0), jnp.float32(-1.0), 0, cfg, 64)) == 0.0


def test_bottleneck_head_matches_dmd2_at_8x8_and_adapts_to_small_bottlenecks():
  head = discriminator.BottleneckHead()
  for size in (1, 2, 4, 8, 16):  # shapes only (no compilation), then one real forward at 8x8
    feats = jax.ShapeDtypeStruct((2, size, size, 8), jnp.float32)
    params = jax.eval_shape(head.init, jax.random.key(0), feats)
    assert jax.eval_shape(head.apply, params, feats).shape == (2,)
    if size == 8:  # Conv4x4 s2 p1 -> GN -> SiLU -> Conv4x4 s4 -> GN -> SiLU -> Conv1x1
      assert params["params"]["conv0"]["kernel"].shape == (4, 4, 8, 8)
      assert params["params"]["conv1"]["kernel"].shape == (4, 4, 8, 8)
      assert params["params"]["out"]["kernel"].shape == (1, 1, 8, 1)
  feats = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  logits = head.apply(head.init(jax.random.key(0), feats), feats)
  assert logits.shape == (2,) and bool(jnp.all(jnp.isfinite(logits)))
  assert discriminator._head_stages(8) == ((4, 2, 1), (4, 4, 0))  # pylint: disable=protected-access
  assert discriminator._head_stages(4) == ((4, 2, 1), (2, 2, 0))  # pylint: disable=protected-access


def test_minibatch_std_is_the_mean_feature_std_of_each_group_of_consecutive_samples():
  h = np.random.default_rng(0).normal(size=(6, 3, 2, 5)).astype(np.float32)
  out = np.asarray(discriminator.minibatch_std(jnp.asarray(h), 4))   # 6 samples: groups of 3 (largest divisor <= 4)
  assert out.shape == (6, 3, 2, 6)
  np.testing.assert_array_equal(out[..., :5], h)
  for g in range(2):
    group = h[3 * g:3 * g + 3]
    want = np.mean(np.sqrt(np.var(group, axis=0) + 1e-8))   # population std over the group, then the mean
    np.testing.assert_allclose(out[3 * g:3 * g + 3, ..., 5], want, rtol=1e-5)
  same = np.repeat(h[:1], 6, axis=0)                       # a collapsed batch: spread ~0 (the 1e-8 floor)
  np.testing.assert_allclose(np.asarray(discriminator.minibatch_std(jnp.asarray(same), 2))[..., 5], 1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_minibatch_std_makes_a_logit_depend_on_its_group_only(kind):
  shape = (8,) if kind == "mlp" else (8, 8, 1)
  spec = data_lib.DataSpec(key="x" if kind == "mlp" else "image", shape=shape, num_classes=0)
  x = jax.random.normal(jax.random.key(0), (4, *shape))
  moved = x.at[1].add(1.0)                                  # change sample 1 only
  for group, dependent in ((0, False), (2, True)):
    cfg = discriminator.critic_config(kind=kind, hidden=16, depth=2, channels=4, channel_mult=(1, 2),
                                      minibatch_std=group)
    critic = discriminator.build_critic(cfg, spec)
    params = critic.init(jax.random.key(1), x)
    before, after = critic.apply(params, x), critic.apply(params, moved)
    assert bool(before[0] != after[0]) == dependent         # sample 0 shares sample 1's group only with the layer
    np.testing.assert_array_equal(before[2:], after[2:])    # the other group never sees sample 1


def test_a_critic_section_saved_before_minibatch_std_existed_builds_without_it():
  saved = discriminator.critic_config().to_dict()
  del saved["minibatch_std"]
  critic = discriminator.build_critic(ml_collections.ConfigDict(saved), data_lib.DataSpec(key="x", shape=(2,),
                                                                                          num_classes=0))
  assert critic.minibatch_std == 0


def _toy(module, critic_steps=1):
  config = module.get_config("toy2d,smoke")
  if module is adversarial_config:
    config.objective.adversarial.critic_steps = critic_steps
    config.objective.adversarial.instance_noise.kind = "diffusion"
    config.objective.adversarial.critic.noise_conditioned = True
  dataset = data_lib.build(config.data)
  return config, dataset, objectives.build(config, dataset.spec)


def _same(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))


def test_critic_steps_leave_the_generator_untouched():
  _, dataset, objective = _toy(adversarial_config, critic_steps=3)
  state = objective.init(jax.random.key(0), example_batch(dataset.spec), None)
  step = jax.jit(objective.train_step)
  it = dataset.iterator()
  history = [state]
  for _ in range(3):
    state, metrics = step(state, next(it), None)
    history.append(state)
  for before, after in zip(history[:2], history[1:3]):  # steps 0 and 1: critic only
    assert _same(before.params["generator"], after.params["generator"])
    assert _same(before.opt_state["generator"], after.opt_state["generator"])
    assert _same(before.ema["generator"], after.ema["generator"])
    assert not _same(before.params["critic"], after.params["critic"])
  assert not _same(history[2].params["generator"], history[3].params["generator"])  # step 2: generator turn
  assert not _same(history[2].params["critic"], history[3].params["critic"])
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert "diffusion/p" in metrics
  assert objective.sample(state, jax.random.key(1), 5).shape == (5, 2)


def test_one_critic_step_per_generator_step_updates_both_every_step():
  # critic_steps = 1 takes the path without lax.cond: the generator must still move on every step.
  assert adversarial.generator_turn(jnp.asarray(5), 1).on is True
  _, dataset, objective = _toy(adversarial_config, critic_steps=1)
  state = objective.init(jax.random.key(0), example_batch(dataset.spec), None)
  step = jax.jit(objective.train_step)
  it = dataset.iterator()
  for _ in range(2):
    new, metrics = step(state, next(it), None)
    assert not _same(state.params["generator"], new.params["generator"])
    assert not _same(state.ema["generator"], new.ema["generator"])
    assert not _same(state.params["critic"], new.params["critic"])
    assert float(metrics["generator/loss"]) != 0.0
    state = new


def test_add_student_levels_and_distillation_term():
  sigmas = add.student_sigmas(add.default_config())
  np.testing.assert_allclose(sigmas, (80.0, 17.017, 3.4129, 0.95371), rtol=1e-4)
  # The distillation gradient reaches x_hat only directly: 2 c(t) (x_hat - target) / numel per sample.
  x_hat = jax.random.normal(jax.random.key(0), (4, 3))
  teacher_fn = lambda x, sigma, labels: 0.5 * x
  rng = jax.random.key(1)
  loss, sigma = add.distillation_loss(x_hat, teacher_fn, rng, None)
  _, rng_eps = jax.random.split(rng)
  target = 0.5 * (x_hat + sigma[:, None] * jax.random.normal(rng_eps, x_hat.shape))
  c = 1 / jnp.sqrt(1 + sigma**2)
  np.testing.assert_allclose(loss, jnp.mean(c * jnp.mean((x_hat - target) ** 2, axis=1)), rtol=1e-5)
  grad = jax.grad(lambda v: add.distillation_loss(v, teacher_fn, rng, None)[0])(x_hat)
  np.testing.assert_allclose(grad, 2 * c[:, None] * (x_hat - target) / x_hat.size, rtol=1e-4, atol=1e-7)


def test_add_student_input_at_each_level():
  x0 = 3.0 + jax.random.normal(jax.random.key(0), (256, 2))
  rng = jax.random.key(1)
  sigmas = (1.0, 0.5, 0.25)
  _, rng_eps = jax.random.split(rng)
  eps = jax.random.normal(rng_eps, x0.shape)
  for noise_only in (False, True):
    x, sigma = add.noised_input(rng, x0, sigmas=sigmas, top_level_noise_only=noise_only)
    assert set(np.unique(np.asarray(sigma)).tolist()) == set(sigmas)  # every level drawn
    top = np.asarray(sigma == sigmas[0])
    signal = np.where(top[:, None], 0.0, x0) if noise_only else x0
    np.testing.assert_allclose(x, signal + np.asarray(sigma)[:, None] * eps, rtol=1e-6, atol=1e-6)


def test_add_train_step_with_the_analytic_teacher():
  config, dataset, objective = _toy(add_config)
  teacher = teachers.build(config.teacher, dataset, config.network)
  state = objective.init(jax.random.key(0), example_batch(dataset.spec), teacher)
  new_state, metrics = jax.jit(objective.train_step)(state, next(dataset.iterator()), teacher)
  for key in ("generator/loss", "generator/loss_adv", "generator/loss_dist", "critic/loss"):
    assert np.isfinite(metrics[key]), key
  assert not _same(state.params["generator"], new_state.params["generator"])
  assert objective.sample(new_state, jax.random.key(1), 3, None, 4).shape == (3, 2)
