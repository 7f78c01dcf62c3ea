"""The `ign` objective: its losses against hand-set networks, gradient routing, the clamp, noise, projection."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ign as ign_config
from gendistill import data as data_lib
from gendistill import objectives
from gendistill.objectives import ign
from gendistill.objectives.base import example_batch


def _scale_net(params, x, labels=None, rng=None):
  del labels, rng
  return params["w"] * x


def _mlp_net(params, x, labels=None, rng=None):
  """A small nonlinear map R^3 -> R^3 with hand-set parameters."""
  del labels, rng
  return jnp.tanh(x @ params["W"] + params["b"]) @ params["V"] + 0.5 * x


def _mlp_params():
  rng = np.random.default_rng(0)
  return {"W": jnp.asarray(rng.normal(size=(3, 4)) * 0.7, jnp.float32),
          "b": jnp.asarray(rng.normal(size=(4,)) * 0.1, jnp.float32),
          "V": jnp.asarray(rng.normal(size=(4, 3)) * 0.7, jnp.float32)}


def _data(n=6, d=3):
  x = jax.random.uniform(jax.random.key(0), (n, d), minval=-1, maxval=1)
  z = jax.random.normal(jax.random.key(1), (n, d))
  return x, z


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_identity_network_is_a_perfect_projector_and_tightness_is_at_its_maximum(kind):
  """f = id: L_rec = L_idem = 0 and L~tight = 0, its largest value (L~tight <= 0 for every f); any f that is not
  idempotent on its range has L~tight < 0, so minimising L_tight pushes f away from the identity."""
  x, z = _data()
  loss, aux = ign.ign_losses(_scale_net, {"w": jnp.float32(1.0)}, x, z, distance_kind=kind)
  for key in ("rec", "idem", "tight_raw", "tight"):
    assert float(aux[key]) == 0.0, (key, aux[key])
  assert float(loss) == 0.0
  _, aux = ign.ign_losses(_scale_net, {"w": jnp.float32(0.8)}, x, z, distance_kind=kind)
  assert float(aux["tight_raw"]) < 0 and float(aux["rec"]) > 0 and float(aux["idem"]) > 0
  # f = 0.8 x: f(f(z)) - f(z) = -0.16 z.
  expect = np.mean(np.abs(0.16 * np.asarray(z))) if kind == "l1" else np.mean((0.16 * np.asarray(z)) ** 2)
  np.testing.assert_allclose(-aux["tight_raw"], expect, rtol=1e-5)


def _explicit_parts(p_inner, p_outer, z, kind):
  """L_idem and L~tight written with two separate parameter copies: f(p_outer, f(p_inner, z))."""
  fz = _mlp_net(p_inner, z)
  ffz = _mlp_net(p_outer, fz)
  d = ign.distance(ffz, fz, kind)
  return jnp.mean(d), -jnp.mean(d)


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_idempotence_gradient_flows_only_through_the_inner_application(kind):
  params = _mlp_params()
  x, z = _data()
  only_idem = functools.partial(ign.ign_losses, _mlp_net, x=x, z=z, distance_kind=kind, weights=(0.0, 1.0, 0.0))
  got = jax.grad(lambda p: only_idem(p)[0])(params)
  want = jax.grad(lambda p_in: _explicit_parts(p_in, params, z, kind)[0])(params)
  both = jax.grad(lambda p: _explicit_parts(p, p, z, kind)[0])(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.allclose(a, b, atol=1e-6)), got, both)))


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_tightness_gradient_flows_only_through_the_outer_application(kind):
  params = _mlp_params()
  x, z = _data()
  only_tight = functools.partial(ign.ign_losses, _mlp_net, x=x, z=z, distance_kind=kind, clamp=0.0,
                                 weights=(0.0, 0.0, 1.0))
  got = jax.grad(lambda p: only_tight(p)[0])(params)
  want = jax.grad(lambda p_out: _explicit_parts(params, p_out, z, kind)[1])(params)
  both = jax.grad(lambda p: _explicit_parts(p, p, z, kind)[1])(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.allclose(a, b, atol=1e-6)), got, both)))


def test_scalar_network_gradients_match_closed_forms():
  """f = w x, MSE: d L_idem/dw = 2 (w - 1)^2 w E z^2 (inner only; both would give 2 (w^2 - w)(2w - 1) E z^2) and
  d L~tight/dw = -2 (w - 1) w^2 E z^2 (outer only)."""
  x, z = _data()
  ez2 = float(jnp.mean(z**2))
  w = 0.7
  idem = lambda p: ign.ign_losses(_scale_net, p, x, z, distance_kind="mse", weights=(0.0, 1.0, 0.0))[0]
  tight = lambda p: ign.ign_losses(_scale_net, p, x, z, distance_kind="mse", clamp=0.0, weights=(0.0, 0.0, 1.0))[0]
  np.testing.assert_allclose(jax.grad(idem)({"w": jnp.float32(w)})["w"], 2 * (w - 1) ** 2 * w * ez2, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(tight)({"w": jnp.float32(w)})["w"], -2 * (w - 1) * w**2 * ez2, rtol=1e-5)


@pytest.mark.parametrize("mode", ["per_sample", "batch"])
def test_clamp_keeps_tightness_in_bounds_and_matches_the_formula(mode):
  rng = np.random.default_rng(1)
  a = 1.5
  for scale in (0.01, 1.0, 30.0):
    tight_raw = -np.abs(rng.normal(size=16)) * scale
    rec = np.abs(rng.normal(size=16)) + 0.05
    got = float(ign.tight_clamp(jnp.asarray(tight_raw), jnp.asarray(rec), a, mode))
    if mode == "per_sample":
      want = np.mean(np.tanh(tight_raw / (a * rec)) * a * rec)
    else:
      want = np.tanh(tight_raw.mean() / (a * rec.mean())) * a * rec.mean()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert -a * rec.mean() < got <= 0.0
  # The bound (-a L_rec, 0] holds for a network's losses too.
  x, z = _data()
  for w in (0.3, 0.9, 1.4, 3.0):
    _, aux = ign.ign_losses(_scale_net, {"w": jnp.float32(w)}, x, z, clamp=a, clamp_mode=mode)
    assert -a * float(aux["rec"]) < float(aux["tight"]) <= 0.0
  # L_rec = 0: the clamp is 0 (its limit) with finite gradients.
  g = jax.grad(lambda t, r: ign.tight_clamp(t, r, a, mode), argnums=(0, 1))(-jnp.ones(4), jnp.zeros(4))
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in g)
  assert float(ign.tight_clamp(-jnp.ones(4), jnp.zeros(4), a, mode)) == 0.0


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_imle_pulls_each_real_samples_nearest_generated_sample(kind):
  """L_imle = mean_i D(f(z_j(i)), x_i) with j(i) the nearest f(z); its gradient equals that of the same distances
  with the choice held fixed, and reaches only the chosen samples."""
  params = _mlp_params()
  x, z = _data(n=6)
  fz = _mlp_net(params, z)
  d2 = np.sum((np.asarray(x)[:, None] - np.asarray(fz)[None]) ** 2, axis=-1)
  nearest = np.argmin(d2, axis=1)
  want = float(jnp.mean(ign.distance(fz[nearest], x, kind)))
  np.testing.assert_allclose(float(ign.imle_loss(x, fz, distance_kind=kind)), want, rtol=1e-6)
  got = jax.grad(lambda p: ign.imle_loss(x, _mlp_net(p, z), distance_kind=kind))(params)
  fixed = jax.grad(lambda p: jnp.mean(ign.distance(_mlp_net(p, z)[nearest], x, kind)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, fixed)
  grad_fz = jax.grad(lambda g: ign.imle_loss(x, g, distance_kind=kind))(fz)
  unchosen = np.setdiff1d(np.arange(fz.shape[0]), nearest)
  assert unchosen.size and np.all(np.asarray(grad_fz)[unchosen] == 0.0)
  # Through ign_losses: the weighted term is added to the paper's loss.
  base_loss, aux = ign.ign_losses(_mlp_net, params, x, z, distance_kind=kind)
  loss, aux_imle = ign.ign_losses(_mlp_net, params, x, z, distance_kind=kind, imle_weight=3.0)
  assert float(aux["imle"]) == 0.0
  np.testing.assert_allclose(float(aux_imle["imle"]), want, rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(base_loss) + 3.0 * want, rtol=1e-5)


def test_imle_pulls_a_generated_sample_toward_an_empty_mode():
  """Every generated sample sits at one mode; a real sample at a distant mode still pulls the nearest of them,
  and only that one, toward itself (the tightness term gives no such pull)."""
  fz = jnp.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.3, 0.2]])
  x = jnp.array([[0.05, 0.05], [3.0, 2.0]])
  grad = np.asarray(jax.grad(lambda g: ign.imle_loss(x, g, distance_kind="mse"))(fz))
  step = -grad[3]
  assert np.all(step > 0)                                   # toward (3, 2)
  np.testing.assert_allclose(step / np.linalg.norm(step), (np.array([3.0, 2.0]) - np.array([0.3, 0.2]))
                             / np.linalg.norm(np.array([2.7, 1.8])), rtol=1e-5)
  assert np.all(grad[1:3] == 0.0)


def test_imle_matches_within_a_class_and_skips_real_samples_without_one():
  x = jnp.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
  fz = jnp.array([[0.1, 0.0], [0.9, 0.0]])
  onehot = lambda ids: jax.nn.one_hot(jnp.array(ids), 3)
  # x_0 (class 1) must take fz_1 (class 1) although fz_0 is nearer; x_1 takes fz_0; x_2 (class 2) has no match.
  got = ign.imle_loss(x, fz, onehot([1, 0, 2]), onehot([0, 1]), distance_kind="l1")
  want = (np.mean(np.abs([0.9, 0.0])) + np.mean(np.abs([0.9, 0.0]))) / 2
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_fourier_noise_has_the_data_amplitude_and_is_real():
  rng = np.random.default_rng(2)
  images = jnp.asarray(np.cumsum(rng.normal(size=(64, 8, 8, 2)), axis=1) * 0.2, jnp.float32)  # correlated rows
  amp = ign.fourier_amplitude(images)
  assert amp.shape == (8, 8, 2)
  noise = ign.fourier_noise(jax.random.key(3), amp, 256)
  assert noise.shape == (256, 8, 8, 2) and noise.dtype == jnp.float32
  spectrum = jnp.abs(jnp.fft.fftn(noise, axes=(1, 2)))
  # Every sample has exactly the target amplitude (random phase only).
  np.testing.assert_allclose(spectrum, jnp.broadcast_to(amp, spectrum.shape), rtol=1e-3, atol=1e-4)
  # ... hence the data's per-pixel second moment on average.
  np.testing.assert_allclose(jnp.mean(noise**2), jnp.mean(images**2), rtol=0.1)
  vec_amp = ign.fourier_amplitude(jnp.ones((5, 2)))
  assert ign.fourier_noise(jax.random.key(0), vec_amp, 3).shape == (3, 2)


def test_projection_refines_and_corruptions_behave():
  apply_fn = lambda params, x, sigma, labels=None: params * x
  x = jnp.ones((2, 4, 4, 1))
  np.testing.assert_allclose(ign.project(apply_fn, 0.5, x, sigma=1.0, steps=3), 0.125 * x)
  images = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1), minval=-1, maxval=1)
  for name, fn in ign.CORRUPTIONS.items():
    out = fn(jax.random.key(1), images)
    assert out.shape == images.shape and bool(jnp.all(jnp.isfinite(out))), name
  np.testing.assert_allclose(ign.corrupt_blur(None, jnp.full((1, 8, 8, 1), 0.3)), 0.3, rtol=1e-5)
  masked = ign.corrupt_mask(jax.random.key(2), images, frac=0.5, fill=5.0)
  assert [int(jnp.sum(masked[i] == 5.0)) for i in range(3)] == [16, 16, 16]
  sketch = ign.corrupt_sketch(None, images)
  assert set(np.unique(np.asarray(sketch)).tolist()) <= {-1.0, 1.0}


@pytest.fixture(scope="module")
def toy_objective():
  config = ign_config.get_config("toy2d,smoke")
  config.objective.ign.noise = "fourier"
  dataset = data_lib.build(config.data)
  return config, dataset, objectives.build(config, dataset.spec)


def test_train_step_and_refinement_sampling(toy_objective):
  config, dataset, objective = toy_objective
  state = objective.init(jax.random.key(0), example_batch(dataset.spec), None)
  batch = next(dataset.iterator())
  new_state, metrics = jax.jit(objective.train_step)(state, batch, None)
  assert int(new_state.step) == 1
  for key in ("generator/loss", "generator/loss_rec", "generator/loss_idem", "generator/loss_tight"):
    assert np.isfinite(metrics[key]), key
  assert ("generator/loss_imle" in metrics) == (config.objective.ign.lambda_imle > 0)   # the toy preset turns it on
  np.testing.assert_allclose(new_state.extra["noise_amplitude"], ign.fourier_amplitude(jnp.asarray(batch["x"])),
                             rtol=1e-5)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params["generator"],
                         new_state.params["generator"])
  assert any(jax.tree.leaves(changed))
  # sample(steps=k) is f^k of the same noise; project applies the same network.
  rng = jax.random.key(5)
  one = objective.sample(new_state, rng, 7, None, 1)
  three = objective.sample(new_state, rng, 7, None, 3)
  project = ign.projector(objectives.networks_for(config, dataset.spec)["generator"], config.objective.ign)
  params = new_state.ema["generator"]
  np.testing.assert_allclose(three, project(params, project(params, one)), rtol=1e-5, atol=1e-6)


def test_train_step_adds_the_configured_imle_term():
  config = ign_config.get_config("toy2d,smoke")
  config.objective.ign.lambda_imle = 4.0
  dataset = data_lib.build(config.data)
  objective = objectives.build(config, dataset.spec)
  state = objective.init(jax.random.key(0), example_batch(dataset.spec), None)
  _, m = jax.jit(objective.train_step)(state, next(dataset.iterator()), None)
  o = config.objective.ign
  parts = (o.lambda_rec * m["generator/loss_rec"] + o.lambda_idem * m["generator/loss_idem"]
           + o.lambda_tight * m["generator/loss_tight"])
  assert float(m["generator/loss_imle"]) > 0
  np.testing.assert_allclose(m["generator/loss"], parts + 4.0 * m["generator/loss_imle"], rtol=1e-5)
