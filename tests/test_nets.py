"""Tests of the raw backbones (gendistill/nets/unet.py, mlp.py, layers.py): shapes, rng behaviour, and the
numerics pinned against direct numpy computations in EDM's (NCHW, OIHW) conventions."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill.nets import layers
from gendistill.nets import mlp
from gendistill.nets import unet

N = 4
LABEL_DIM = 10


def _tiny(label_dim=0, **overrides):
  kw = dict(unet.PRESETS["tiny"], in_channels=2, out_channels=2, label_dim=label_dim)
  kw.update(overrides)
  return unet.UNet(**kw)


def _inputs(label_dim, n=N, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, 16, 16, 2)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(n), jnp.float32)
  labels = jnp.asarray(np.eye(label_dim)[rng.integers(0, label_dim, n)], jnp.float32) if label_dim else None
  return x, noise, labels


def _random_params(model, *args, seed=1, scale=0.2, **kwargs):
  """Random parameters of the right structure (from eval_shape, so no init computation is compiled), with
  norm scales near 1 and non-zero zero-initialised layers (conv1, proj, aux_conv), so that every path carries
  signal."""
  shapes = jax.eval_shape(functools.partial(model.init, **kwargs), _key(0), *args)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    value = scale * rng.standard_normal(leaf.shape)
    if path[-1].key == "scale":
      value += 1.0
    elif path[-1].key == "kernel":
      value /= np.sqrt(np.prod(leaf.shape[:-1]) / 8)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _key(seed):
  """Test keys use the RBG generator: the modules only call make_rng, and threefry (partitionable) costs
  several seconds of XLA:CPU compilation per UNet."""
  return jax.random.key(seed, impl="unsafe_rbg")


@functools.lru_cache(maxsize=None)
def _unconditional_run():
  """Tiny unconditional UNet (dropout 0.1) and one compiled function that evaluates it in eval and train mode."""
  model = _tiny(0)
  x, noise, _ = _inputs(0)
  params = _random_params(model, x, noise)

  @jax.jit
  def run(params, key):
    return dict(eval_with_features=model.apply(params, x, noise, return_features=True),  # no rng in eval mode
                train=model.apply(params, x, noise, None, True, rngs={"dropout": key}))

  return model, params, run


@functools.lru_cache(maxsize=None)
def _conditional_run():
  """Tiny class-conditional UNet with label dropout 0.5 and activation dropout 0 (so train mode differs from
  eval mode only by label dropout), in one compiled function. Eval mode runs on the batch with its labels
  followed by the same batch with all-zero labels."""
  model = _tiny(LABEL_DIM, dropout=0.0, label_dropout=0.5)
  x, noise, labels = _inputs(LABEL_DIM)
  params = _random_params(model, x, noise, labels)
  both = lambda a, b: jnp.concatenate([a, b])

  @jax.jit
  def run(params, key):
    out, state = model.apply(params, both(x, x), both(noise, noise), both(labels, 0 * labels),
                             capture_intermediates=True, mutable=["intermediates"])
    train, features = model.apply(params, x, noise, labels, train=True, return_features=True,
                                  rngs={"dropout": key})
    return dict(cond=out[:N], uncond=out[N:], intermediates=state["intermediates"], train=train,
                train_features=features)

  return model, params, run


# ------------------------------------------------------------------------------------------------------------
# UNet: shapes, names, rng behaviour.


def test_unet_unconditional_shapes_and_dropout():
  """Shapes with and without features in eval and train mode; dropout acts only in train mode, is
  deterministic given the rng, and eval mode needs no rng. (One test per compiled model: pytest-xdist would
  compile a shared cached model once per worker.)"""
  _, params, run = _unconditional_run()
  a, a2, b = run(params, _key(10)), run(params, _key(10)), run(params, _key(11))
  output, features = a["eval_with_features"]
  assert output.shape == a["train"].shape == (N, 16, 16, 2)
  assert output.dtype == a["train"].dtype == jnp.float32
  assert features.shape == (N, 8, 8, 32)  # output of enc/8x8_block0: model_channels 16 * channel_mult 2
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(a))
  np.testing.assert_array_equal(output, b["eval_with_features"][0])
  np.testing.assert_array_equal(a["train"], a2["train"])
  assert np.max(np.abs(a["train"] - output)) > 1e-3
  assert np.max(np.abs(a["train"] - b["train"])) > 1e-3
  model = _tiny(0)
  x, noise, _ = _inputs(0)
  shapes = jax.eval_shape(model.apply, params, x, noise)  # return_features=False
  assert shapes.shape == x.shape and shapes.dtype == jnp.float32


def test_unet_conditional_label_dropout_and_mapping():
  """Conditional shapes; label dropout zeroes each sample's label vector whole, in train mode only; map_noise
  gives EDM's [cos, sin] and map_layer0 receives SongUNet's swapped [sin, cos] plus the label map."""
  _, params, run = _conditional_run()
  first = run(params, _key(0))
  cond, uncond = first["cond"], first["uncond"]
  assert cond.shape == first["train"].shape == (N, 16, 16, 2)
  assert first["train_features"].shape == (N, 8, 8, 32)
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(first))
  assert np.all(np.max(np.abs(cond - uncond), axis=(1, 2, 3)) > 1e-4)
  seen = set()
  for seed in range(4):
    out = run(params, _key(seed))["train"]
    for i in range(N):
      is_cond = np.allclose(out[i], cond[i], atol=1e-5, rtol=0)
      is_uncond = np.allclose(out[i], uncond[i], atol=1e-5, rtol=0)
      assert is_cond != is_uncond
      seen.add(is_cond)
  assert seen == {True, False}

  inter = first["intermediates"]
  _, noise, labels = _inputs(LABEL_DIM)
  noise = np.concatenate([noise, noise]).astype(np.float64)
  labels = np.concatenate([labels, 0 * labels]).astype(np.float64)
  nf = noise[:, None] * (1 / 10000) ** (np.arange(8) / 7)  # 16 channels, endpoint=True
  np.testing.assert_allclose(inter["map_noise"]["__call__"][0], np.concatenate([np.cos(nf), np.sin(nf)], 1),
                             atol=1e-5)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  emb = np.concatenate([np.sin(nf), np.cos(nf)], 1)
  emb = emb + (labels * np.sqrt(LABEL_DIM)) @ p["map_label"]["kernel"] + p["map_label"]["bias"]
  expected = emb @ p["map_layer0"]["kernel"] + p["map_layer0"]["bias"]
  np.testing.assert_allclose(inter["map_layer0"]["__call__"][0], expected, rtol=1e-4, atol=1e-4)


def test_unet_param_names_follow_songunet():
  x, noise, labels = _inputs(LABEL_DIM)
  p = jax.eval_shape(_tiny(LABEL_DIM).init, _key(0), x, noise, labels)["params"]
  assert {"map_label", "map_layer0", "map_layer1", "enc", "dec"} <= set(p)
  assert set(p["enc"]) == {"16x16_conv", "16x16_block0", "8x8_down", "8x8_block0"}
  assert set(p["dec"]) == {"8x8_in0", "8x8_in1", "8x8_block0", "8x8_block1", "16x16_up", "16x16_block0",
                           "16x16_block1", "16x16_aux_norm", "16x16_aux_conv"}
  assert set(p["enc"]["16x16_block0"]) == {"norm0", "conv0", "affine", "norm1", "conv1"}
  assert set(p["enc"]["8x8_down"]) == {"norm0", "conv0", "affine", "norm1", "conv1", "skip"}
  assert set(p["dec"]["8x8_in0"]) == {"norm0", "conv0", "affine", "norm1", "conv1", "norm2", "qkv", "proj"}
  assert "qkv" in p["enc"]["8x8_block0"] and "qkv" in p["dec"]["8x8_block1"]  # attention at 8x8
  assert "qkv" not in p["dec"]["8x8_block0"] and "qkv" not in p["dec"]["16x16_block1"]
  assert p["dec"]["8x8_in0"]["qkv"]["kernel"].shape == (1, 1, 32, 96)
  assert p["enc"]["16x16_block0"]["conv0"]["kernel"].shape == (3, 3, 16, 16)
  assert p["dec"]["16x16_block0"]["conv0"]["kernel"].shape == (3, 3, 48, 16)  # 32 + skip 16
  assert p["map_layer0"]["kernel"].shape == (16, 64)
  unconditional = jax.eval_shape(_tiny(0).init, _key(0), x, noise)["params"]
  assert "map_label" not in unconditional and "map_augment" not in unconditional
  augmented = jax.eval_shape(_tiny(0, augment_dim=9).init, _key(0), *_inputs(0)[:2])["params"]
  assert set(augmented["map_augment"]) == {"kernel"}  # no bias, created even without augment_labels


def test_unet_block_init_follows_edm_initialisers():
  block = unet.UNetBlock(out_channels=16, attention=True, num_heads=1, adaptive_scale=False,
                         init_weight=1.0, init_zero_weight=1e-5, init_attn_weight=float(np.sqrt(0.2)))
  params = jax.jit(block.init)(_key(0), jnp.zeros((1, 4, 4, 8)), jnp.zeros((1, 12)))["params"]
  # xavier_uniform * init_weight: bound = init_weight * sqrt(6 / (fan_in + fan_out)), fans count k * k.
  bound = lambda shape, weight: weight * np.sqrt(6 / ((shape[-2] + shape[-1]) * np.prod(shape[:-2])))
  for name, weight in [("conv0", 1.0), ("conv1", 1e-5), ("skip", 1.0), ("qkv", np.sqrt(0.2)), ("proj", 1e-5),
                       ("affine", 1.0)]:
    kernel = np.asarray(params[name]["kernel"])
    assert np.abs(kernel).max() <= bound(kernel.shape, weight) * (1 + 1e-6)
    assert np.abs(kernel).max() > 0.8 * bound(kernel.shape, weight)
    np.testing.assert_array_equal(params[name]["bias"], 0.0)
  np.testing.assert_array_equal(params["norm0"]["scale"], 1.0)
  np.testing.assert_array_equal(params["norm0"]["bias"], 0.0)


def test_presets_build():
  for name, expected in [("digits", 1_234_577), ("digits_fast", 744_401)]:
    shapes = jax.eval_shape(unet.UNet(**unet.PRESETS[name], label_dim=10).init, _key(0),
                            jnp.zeros((1, 16, 16, 1)), jnp.zeros(1), jnp.zeros((1, 10)))
    assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes)) == expected
  cifar = jax.eval_shape(unet.UNet(**unet.PRESETS["cifar10"]).init, _key(0), jnp.zeros((1, 32, 32, 3)),
                         jnp.zeros(1))
  assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(cifar)) == 55_732_739  # EDM: 55.73M


def test_fourier_embedding_frequencies_are_a_frozen_parameter():
  noise = np.array([-1.0, 0.0, 0.25], np.float32)
  module = unet._Embedding(16, "fourier")  # pylint: disable=protected-access
  variables = module.init(_key(0), noise)
  freqs = layers.fourier_frequencies(16)
  np.testing.assert_array_equal(variables["params"]["freqs"], freqs)  # EDM's buffer converts into this leaf
  for f in (freqs, freqs[::-1].copy()):
    nf = noise[:, None] * 2 * np.pi * f
    out = jax.jit(module.apply)({"params": {"freqs": jnp.asarray(f)}}, noise)
    np.testing.assert_allclose(out, np.concatenate([np.cos(nf), np.sin(nf)], 1), atol=1e-4)
  grads = jax.grad(lambda v: module.apply(v, noise).sum())(variables)
  assert not np.any(np.asarray(grads["params"]["freqs"]))  # never trained


def test_bfloat16_compute_keeps_float32_params_and_output():
  model = _tiny(LABEL_DIM, dtype=jnp.bfloat16)
  x, noise, labels = _inputs(LABEL_DIM)
  shapes = jax.eval_shape(model.init, _key(0), x, noise, labels)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  out, feats = jax.eval_shape(functools.partial(model.apply, return_features=True), shapes, x, noise, labels)
  assert out.dtype == jnp.float32 and feats.dtype == jnp.bfloat16
  block = lambda dtype: unet.UNetBlock(out_channels=16, down=True, attention=True, num_heads=1, dtype=dtype)
  x, emb = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 8)), jnp.float32), jnp.ones((2, 12))
  params = _random_params(block(jnp.float32), x, emb)
  ref = jax.jit(block(jnp.float32).apply)(params, x, emb)
  low = jax.jit(block(jnp.bfloat16).apply)(params, x, emb)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), ref, atol=0.05 * float(np.abs(ref).max()))


# ------------------------------------------------------------------------------------------------------------
# Numerics against numpy in EDM's conventions.


def _np_conv(x, w, b=None):
  """torch.nn.functional.conv2d(x, w, padding=k//2) in numpy: x [N, C, H, W], w [O, C, k, k]."""
  k = w.shape[-1]
  p = k // 2
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  h, wd = x.shape[2:]
  out = np.zeros((x.shape[0], w.shape[0], h, wd))
  for i in range(k):
    for j in range(k):
      out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
  return out if b is None else out + b[None, :, None, None]


def _np_group_norm(x, scale, bias, eps, groups):
  n, c, h, w = x.shape
  xr = x.reshape(n, groups, -1)
  xr = (xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + eps)
  return xr.reshape(x.shape) * scale[None, :, None, None] + bias[None, :, None, None]


def _np_attention(qkv, heads):
  """EDM's UNetBlock attention on NCHW qkv [N, 3C, H, W] -> [N, C, H, W]."""
  n, c3, h, w = qkv.shape
  c = c3 // 3
  q, k, v = [qkv.reshape(n * heads, c // heads, 3, h * w)[:, :, i] for i in range(3)]
  logits = np.einsum("ncq,nck->nqk", q, k / np.sqrt(k.shape[1]))
  wts = np.exp(logits - logits.max(-1, keepdims=True))
  wts /= wts.sum(-1, keepdims=True)
  return np.einsum("nqk,nck->ncq", wts, v).reshape(n, c, h, w)


def _to_nchw(x):
  return np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))


def _oihw(kernel):
  return np.transpose(np.asarray(kernel, np.float64), (3, 2, 0, 1))


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_matches_edm_channel_layout(heads):
  rng = np.random.default_rng(0)
  qkv = rng.standard_normal((2, 3, 4, 3 * 8)).astype(np.float32)
  out = layers.attention(jnp.asarray(qkv), heads)
  expected = np.transpose(_np_attention(_to_nchw(qkv), heads), (0, 2, 3, 1))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_attention_hand_set_case():
  """One pixel attends uniformly when all keys are equal; values pass through in EDM's channel order."""
  # C = 2, one head, 2 pixels. EDM channel layout of qkv: [c0q, c0k, c0v, c1q, c1k, c1v].
  qkv = np.zeros((1, 1, 2, 6), np.float32)
  qkv[0, 0, :, 2] = [1.0, 3.0]   # v of channel 0 at the two pixels
  qkv[0, 0, :, 5] = [10.0, 30.0]  # v of channel 1
  out = np.asarray(layers.attention(jnp.asarray(qkv), 1))  # q = k = 0: uniform weights
  np.testing.assert_allclose(out[0, 0], [[2.0, 20.0], [2.0, 20.0]], rtol=1e-6)
  qkv[0, 0, :, 0] = [1.0, 1.0]    # q of channel 0
  qkv[0, 0, :, 1] = [0.0, 50.0]   # k of channel 0: pixel 1 dominates, logits scaled by 1/sqrt(2)
  out = np.asarray(layers.attention(jnp.asarray(qkv), 1))
  np.testing.assert_allclose(out[0, 0], [[3.0, 30.0], [3.0, 30.0]], rtol=1e-5)


@pytest.mark.parametrize("resample", ["none", "down", "up"])
def test_unet_block_matches_numpy_edm_block(resample):
  """A SongUNet block (additive embedding, skip 1x1 conv, attention) against numpy in NCHW/OIHW layout."""
  up, down = resample == "up", resample == "down"
  block = unet.UNetBlock(out_channels=16, up=up, down=down, attention=True, num_heads=1, dropout=0.0,
                         skip_scale=float(np.sqrt(0.5)), eps=1e-6, resample_proj=True, adaptive_scale=False,
                         init_weight=1.0, init_zero_weight=1e-5, init_attn_weight=float(np.sqrt(0.2)))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
  emb = jnp.asarray(rng.standard_normal((2, 12)), jnp.float32)
  variables = _random_params(block, x, emb)
  out = jax.jit(block.apply)(variables, x, emb)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), flax.core.unfreeze(variables["params"]))

  def resample_np(v):
    if up:
      return v.repeat(2, axis=2).repeat(2, axis=3)
    if down:
      n, c, h, w = v.shape
      return v.reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))
    return v

  silu = lambda v: v / (1 + np.exp(-v))
  xn = _to_nchw(x)
  h = _np_group_norm(xn, p["norm0"]["scale"], p["norm0"]["bias"], 1e-6, 2)
  h = _np_conv(resample_np(silu(h)), _oihw(p["conv0"]["kernel"]), p["conv0"]["bias"])
  h = h + (np.asarray(emb, np.float64) @ p["affine"]["kernel"] + p["affine"]["bias"])[:, :, None, None]
  h = silu(_np_group_norm(h, p["norm1"]["scale"], p["norm1"]["bias"], 1e-6, 4))
  h = _np_conv(h, _oihw(p["conv1"]["kernel"]), p["conv1"]["bias"])
  h = (h + _np_conv(resample_np(xn), _oihw(p["skip"]["kernel"]), p["skip"]["bias"])) * np.sqrt(0.5)
  qkv = _np_conv(_np_group_norm(h, p["norm2"]["scale"], p["norm2"]["bias"], 1e-6, 4),
                 _oihw(p["qkv"]["kernel"]), p["qkv"]["bias"])
  a = _np_conv(_np_attention(qkv, 1), _oihw(p["proj"]["kernel"]), p["proj"]["bias"])
  expected = (a + h) * np.sqrt(0.5)
  np.testing.assert_allclose(_to_nchw(out), expected, rtol=1e-4, atol=1e-4)


def test_positional_embedding_matches_numpy():
  x = np.array([-1.5, 0.0, 0.3, 7.0], np.float32)
  emb = layers.swap_halves(layers.positional_embedding(jnp.asarray(x), 32, endpoint=True))
  freqs = (1 / 10000) ** (np.arange(16) / 15)
  np.testing.assert_allclose(emb, np.concatenate([np.sin(np.outer(x, freqs)), np.cos(np.outer(x, freqs))], 1),
                             atol=1e-5)
  plain = layers.positional_embedding(jnp.asarray(x), 32)  # endpoint=False: exponent i / 16
  freqs = (1 / 10000) ** (np.arange(16) / 16)
  np.testing.assert_allclose(plain, np.concatenate([np.cos(np.outer(x, freqs)), np.sin(np.outer(x, freqs))], 1),
                             atol=1e-5)


def test_resampling_matches_avg_pool_and_nearest():
  x = np.random.default_rng(0).standard_normal((2, 6, 4, 3)).astype(np.float32)
  pooled = x.reshape(2, 3, 2, 2, 2, 3).mean(axis=(2, 4))
  nearest = x.repeat(2, axis=1).repeat(2, axis=2)
  np.testing.assert_allclose(layers.downsample(jnp.asarray(x)), pooled, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(layers.upsample(jnp.asarray(x)), nearest)
  # The general (depthwise-convolution) path with an equivalent filter agrees with the fast path.
  np.testing.assert_allclose(layers.downsample(jnp.asarray(x), (2, 2)), pooled, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layers.upsample(jnp.asarray(x), (2, 2)), nearest, rtol=1e-5, atol=1e-6)
  # NCSN++'s (1, 3, 3, 1) filter keeps the mean of a constant image (interior pixels).
  const = jnp.ones((1, 8, 8, 2))
  np.testing.assert_allclose(layers.downsample(const, (1, 3, 3, 1))[0, 1:-1, 1:-1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(layers.upsample(const, (1, 3, 3, 1))[0, 2:-2, 2:-2], 1.0, rtol=1e-6)


def test_group_norm_matches_numpy_and_checks_groups():
  x = np.random.default_rng(0).standard_normal((3, 4, 2, 24)) * 2 + 1
  variables = {"params": {"scale": jnp.linspace(0.5, 1.5, 24), "bias": jnp.linspace(-1, 1, 24)}}
  out = layers.GroupNorm(eps=1e-6).apply(variables, jnp.asarray(x, jnp.float32))  # min(32, 24 // 4) = 6 groups
  expected = _np_group_norm(_to_nchw(x), np.linspace(0.5, 1.5, 24), np.linspace(-1, 1, 24), 1e-6, 6)
  np.testing.assert_allclose(_to_nchw(out), expected, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="groups"):
    layers.GroupNorm().init(_key(0), jnp.zeros((1, 2, 2, 144)))  # 32 groups do not divide 144


# ------------------------------------------------------------------------------------------------------------
# MLP.


def test_mlp_shapes_dropout_and_labels():
  model = mlp.MLP(data_dim=2, label_dim=3, hidden=32, depth=3, emb_dim=16, dropout=0.2, label_dropout=0.5)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(6), jnp.float32)
  labels = jnp.asarray(np.eye(3)[rng.integers(0, 3, 6)], jnp.float32)
  params = jax.jit(model.init)(_key(0), x, noise, labels)
  names = {"map_label", "map_layer0", "map_layer1", "out"} | {f"{n}{i}" for n in ("layer", "emb") for i in range(3)}
  assert set(params["params"]) == names
  assert np.max(np.abs(model.apply(params, x, noise, labels))) < 1e-3  # near-zero output layer at init

  @jax.jit
  def run(params, key):
    rngs = {"dropout": key}
    return dict(eval=model.apply(params, x, noise, labels, return_features=True),
                uncond=model.apply(params, x, noise, jnp.zeros_like(labels)),
                uncond_none=model.apply(params, x, noise, None),
                train=model.apply(params, x, noise, labels, train=True, rngs=rngs))

  params = _random_params(model, x, noise, labels)
  a, a2, b = run(params, _key(0)), run(params, _key(0)), run(params, _key(1))
  out, features = a["eval"]
  assert out.shape == (6, 2) and out.dtype == jnp.float32 and features.shape == (6, 32)
  np.testing.assert_array_equal(a["uncond"], a["uncond_none"])
  assert np.max(np.abs(a["uncond"] - out)) > 1e-4
  np.testing.assert_array_equal(a["train"], a2["train"])
  assert np.max(np.abs(a["train"] - out)) > 1e-4 and np.max(np.abs(a["train"] - b["train"])) > 1e-4
  unconditional = mlp.MLP(data_dim=2, hidden=32, depth=2, emb_dim=16)
  shapes = jax.eval_shape(unconditional.init, _key(0), x, noise)
  assert "map_label" not in shapes["params"]
  assert jax.eval_shape(unconditional.apply, shapes, x, noise).shape == (6, 2)

