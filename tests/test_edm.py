"""The `edm` objective: the loss against a direct computation, its EMA, and one real step."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import edm as edm_config
from gendistill import data as data_lib
from gendistill import objectives
from gendistill.objectives import edm
from gendistill.objectives.base import example_batch
from gendistill.teachers import analytic


def _affine_net(params, x, sigma, labels=None, train=False, rngs=None):
  del labels, train, rngs
  return params["a"] * x + params["b"] * jnp.reshape(sigma, (-1,) + (1,) * (x.ndim - 1))


def test_edm_loss_equals_direct_computation():
  cfg = edm.default_config()
  x = jax.random.uniform(jax.random.key(0), (5, 3, 3, 1), minval=-1, maxval=1)
  params = {"a": jnp.float32(0.7), "b": jnp.float32(-0.2)}
  rng = jax.random.key(42)
  loss, per_sample = edm.edm_loss(_affine_net, params, x, None, rng, cfg=cfg, sigma_data=0.5)

  rng_sigma, rng_noise, _ = jax.random.split(rng, 3)
  sigma = np.exp(-1.2 + 1.2 * np.asarray(jax.random.normal(rng_sigma, (5,))))
  n = np.asarray(jax.random.normal(rng_noise, x.shape))
  x = np.asarray(x)
  ref = []
  for b in range(5):
    y = x[b] + sigma[b] * n[b]
    d = 0.7 * y - 0.2 * sigma[b]
    weight = (sigma[b] ** 2 + 0.5**2) / (sigma[b] * 0.5) ** 2
    ref.append(weight * np.sum((d - x[b]) ** 2))
  np.testing.assert_allclose(per_sample, ref, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(ref), rtol=1e-5)


def test_exact_denoiser_minimises_the_edm_loss():
  """E[x | x_sigma] is the minimiser: scaling it in either direction raises the (expected) loss."""
  weights, means = np.array([0.6, 0.4]), np.array([[-1.0, 0.5], [1.0, -0.5]])
  covs = np.stack([np.eye(2) * 0.05] * 2)
  params = analytic.mixture_params(weights, means, covs)
  rng = np.random.default_rng(0)
  k = rng.choice(2, 20000, p=weights)
  x = jnp.asarray(means[k] + rng.standard_normal((20000, 2)) * np.sqrt(0.05), jnp.float32)
  cfg = edm.default_config()
  losses = {}
  for scale in (0.95, 1.0, 1.05):
    fn = lambda p, x, sigma, labels=None, train=False, rngs=None, s=scale: s * analytic.gmm_denoise(p, x, sigma)
    losses[scale] = float(edm.edm_loss(fn, params, x, None, jax.random.key(1), cfg=cfg, sigma_data=0.5)[0])
  assert losses[1.0] < losses[0.95] and losses[1.0] < losses[1.05], losses


def test_train_step_updates_params_then_ema_with_edm_decay():
  config = edm_config.get_config("toy2d,smoke")
  config.objective.edm.optimizer.warmup_steps = 0   # EDM's ramp-up gives lr 0 on the first step
  dataset = data_lib.build(config.data)
  objective = objectives.build(config, dataset.spec)
  state = objective.init(jax.random.key(0), example_batch(dataset.spec), None)
  batch = next(dataset.iterator())
  new_state, metrics = jax.jit(objective.train_step)(state, batch, None)
  assert int(new_state.step) == 1
  # Step 1 has seen B images; EDM's half-life is min(halflife, 0.05 * B) images.
  b = config.data.batch_size
  decay = 0.5 ** (b / min(config.objective.edm.ema.halflife_kimg * 1000, 0.05 * b))
  np.testing.assert_allclose(metrics["denoiser/ema_decay"], decay, rtol=1e-5)
  expect = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema["denoiser"],
                        new_state.params["denoiser"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_state.ema["denoiser"],
               expect)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params["denoiser"],
                         new_state.params["denoiser"])
  assert any(jax.tree.leaves(changed))
  assert np.isfinite(metrics["denoiser/loss"])


def test_sample_conditions_on_the_requested_labels():
  """A closed-form network whose denoised value is a per-class constant m_c: the Heun sampler's ODE then has
  the solution x(t) = m_c + (x_0 - m_c) t / t_0, which the sampler follows exactly, so every sample must end at
  the constant of its requested class."""
  spec = data_lib.DataSpec("image", (4, 4, 1), 3)
  class_values = jnp.array([-0.7, 0.1, 0.9])

  def apply(params, x, sigma, labels=None, train=False, rngs=None):
    del sigma, train, rngs
    m = labels @ (params["scale"] * class_values)
    return jnp.broadcast_to(jnp.reshape(m, (-1,) + (1,) * (x.ndim - 1)), x.shape)

  network = objectives.base.Network.from_functions(lambda rng, x, sigma, labels: {"scale": jnp.float32(1.0)}, apply)
  run = objectives.RunFacts(batch_size=4, num_steps=1)
  objective = objectives.make("edm", {"denoiser": network}, spec, run)
  state = objective.init(jax.random.key(0), example_batch(spec), None)
  labels = jnp.array([2, 0, 1, 2, 0])
  out = objective.sample(state, jax.random.key(1), 5, labels, 4)
  assert out.shape == (5,) + spec.shape
  np.testing.assert_allclose(out, jnp.broadcast_to(class_values[labels][:, None, None, None], out.shape),
                             atol=1e-5)
