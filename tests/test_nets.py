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


def _perturb(params, seed=1, scale=0.2):
  """Random non-zero parameters, so that zero-initialised layers (conv1, proj, aux_conv) pass signal."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def _tiny_setup(label_dim, dropout=0.1, label_dropout=0.0):
  """(model, perturbed params, jitted apply) for the tiny UNet; cached so each configuration compiles once."""
  model = _tiny(label_dim, dropout=dropout, label_dropout=label_dropout)
  x, noise, labels = _inputs(label_dim)
  params = _perturb(model.init(jax.random.key(0), x, noise, labels))
  apply = jax.jit(model.apply, static_argnames=("train", "return_features"))
  return model, params, apply


# ------------------------------------------------------------------------------------------------------------
# UNet: shapes, names, rng behaviour.


@pytest.mark.parametrize("label_dim", [0, LABEL_DIM])
def test_unet_tiny_shapes(label_dim):
  _, params, apply = _tiny_setup(label_dim)
  x, noise, labels = _inputs(label_dim)
  rngs = {"dropout": jax.random.key(3)}
  for train in (False, True):
    out = apply(params, x, noise, labels, train=train, rngs=rngs)
    assert out.shape == x.shape and out.dtype == jnp.float32
    out2, feats = apply(params, x, noise, labels, train=train, return_features=True, rngs=rngs)
    np.testing.assert_array_equal(out, out2)
    assert feats.shape == (N, 8, 8, 32)  # output of enc/8x8_block0: model_channels 16 * channel_mult 2
  assert np.all(np.isfinite(out))


def test_unet_param_names_follow_songunet():
  _, params, _ = _tiny_setup(LABEL_DIM)
  p = params["params"]
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
  unconditional = _tiny_setup(0)[1]["params"]
  assert "map_label" not in unconditional and "map_augment" not in unconditional


def test_unet_dropout_only_in_train_mode_and_deterministic():
  _, params, apply = _tiny_setup(0)
  x, noise, _ = _inputs(0)
  key_a, key_b = jax.random.key(10), jax.random.key(11)
  eval_a = apply(params, x, noise, train=False, rngs={"dropout": key_a})
  eval_b = apply(params, x, noise, train=False, rngs={"dropout": key_b})
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(eval_a, apply(params, x, noise))  # no rng needed in eval mode
  train_a = apply(params, x, noise, train=True, rngs={"dropout": key_a})
  np.testing.assert_array_equal(train_a, apply(params, x, noise, train=True, rngs={"dropout": key_a}))
  train_b = apply(params, x, noise, train=True, rngs={"dropout": key_b})
  assert np.max(np.abs(train_a - eval_a)) > 1e-3
  assert np.max(np.abs(train_a - train_b)) > 1e-3


def test_unet_label_dropout():
  _, params, apply = _tiny_setup(LABEL_DIM, dropout=0.0, label_dropout=0.5)
  x, noise, labels = _inputs(LABEL_DIM, n=N)
  cond = apply(params, x, noise, labels)
  uncond = apply(params, x, noise, jnp.zeros_like(labels))
  np.testing.assert_array_equal(uncond, apply(params, x, noise, None))  # None = unconditional
  assert np.all(np.max(np.abs(cond - uncond), axis=(1, 2, 3)) > 1e-4)
  seen = set()
  for seed in range(8):
    out = apply(params, x, noise, labels, train=True, rngs={"dropout": jax.random.key(seed)})
    for i in range(N):
      is_cond = np.allclose(out[i], cond[i], atol=1e-5, rtol=0)
      is_uncond = np.allclose(out[i], uncond[i], atol=1e-5, rtol=0)
      assert is_cond != is_uncond
      seen.add(is_cond)
  assert seen == {True, False}


def test_unet_mapping_uses_swapped_positional_embedding():
  """map_noise gives EDM's [cos, sin]; map_layer0 receives SongUNet's swapped [sin, cos] (+ label map)."""
  model, params, _ = _tiny_setup(LABEL_DIM)
  x, noise, labels = _inputs(LABEL_DIM)
  _, state = model.apply(params, x, noise, labels, capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]
  nf = np.asarray(noise, np.float64)[:, None] * (1 / 10000) ** (np.arange(8) / 7)  # 16 channels, endpoint
  np.testing.assert_allclose(inter["map_noise"]["__call__"][0], np.concatenate([np.cos(nf), np.sin(nf)], 1),
                             atol=1e-5)
  p = params["params"]
  emb = np.concatenate([np.sin(nf), np.cos(nf)], 1)
  emb = emb + (np.asarray(labels) * np.sqrt(LABEL_DIM)) @ p["map_label"]["kernel"] + p["map_label"]["bias"]
  expected = emb @ p["map_layer0"]["kernel"] + p["map_layer0"]["bias"]
  np.testing.assert_allclose(inter["map_layer0"]["__call__"][0], expected, rtol=1e-4, atol=1e-4)


def test_unet_fourier_embedding_and_buffer_override():
  model = _tiny(0, embedding_type="fourier", num_blocks=0, attn_resolutions=())
  x, noise, _ = _inputs(0)
  variables = model.init(jax.random.key(0), x, noise)
  assert "buffers" not in variables
  freqs = layers.fourier_frequencies(16)
  nf = np.asarray(noise)[:, None] * 2 * np.pi * freqs
  _, state = model.apply(variables, x, noise, capture_intermediates=True, mutable=["intermediates"])
  np.testing.assert_allclose(state["intermediates"]["map_noise"]["__call__"][0],
                             np.concatenate([np.cos(nf), np.sin(nf)], 1), atol=1e-4)
  other = {**variables, "buffers": {"map_noise": {"freqs": jnp.asarray(freqs[::-1].copy())}}}
  assert np.max(np.abs(model.apply(_perturb(variables), x, noise)
                       - model.apply({**_perturb(variables), **{"buffers": other["buffers"]}}, x, noise))) > 0


def test_unet_bfloat16_compute_keeps_float32_params_and_output():
  model = _tiny(0, dtype=jnp.bfloat16, num_blocks=0, attn_resolutions=())
  x, noise, _ = _inputs(0)
  params = model.init(jax.random.key(0), x, noise)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  out, feats = model.apply(_perturb(params), x, noise, return_features=True)
  assert out.dtype == jnp.float32 and feats.dtype == jnp.bfloat16
  ref = _tiny(0, num_blocks=0, attn_resolutions=()).apply(_perturb(params), x, noise)
  np.testing.assert_allclose(out, ref, atol=0.1 * float(np.abs(ref).max()))


def test_presets_build():
  shapes = jax.eval_shape(
      lambda: unet.UNet(**unet.PRESETS["digits"], label_dim=10).init(
          jax.random.key(0), jnp.zeros((1, 16, 16, 1)), jnp.zeros(1), jnp.zeros((1, 10))))
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
  assert 1_000_000 <= count <= 2_000_000
  cifar = jax.eval_shape(lambda: unet.UNet(**unet.PRESETS["cifar10"]).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros(1)))
  assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(cifar)) == 55_732_739  # EDM: 55.73M


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
  variables = _perturb(block.init(jax.random.key(0), x, emb))
  out = block.apply(variables, x, emb)
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


def test_group_norm_custom_vjp_matches_autodiff():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 10, 8)) * 2 + 1, jnp.float32)
  scale = jnp.asarray(rng.uniform(0.5, 1.5, 8), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(8), jnp.float32)
  probe = jnp.asarray(rng.standard_normal((3, 10, 8)), jnp.float32)

  def reference(x, scale, bias):
    xr = x.reshape(3, 10, 2, 4)
    mean = xr.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(xr - mean).mean(axis=(1, 3), keepdims=True)
    return ((xr - mean) * jax.lax.rsqrt(var + 1e-6)).reshape(x.shape) * scale + bias

  ours = lambda x, s, b: jnp.sum(jnp.sin(layers.group_norm(x, s, b, 2, 1e-6)) * probe)
  ref = lambda x, s, b: jnp.sum(jnp.sin(reference(x, s, b)) * probe)
  np.testing.assert_allclose(ours(x, scale, bias), ref(x, scale, bias), rtol=1e-5)
  for g, r in zip(jax.grad(ours, (0, 1, 2))(x, scale, bias), jax.grad(ref, (0, 1, 2))(x, scale, bias)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# MLP.


@pytest.mark.parametrize("label_dim", [0, 3])
def test_mlp_shapes_and_dropout(label_dim):
  model = mlp.MLP(data_dim=2, label_dim=label_dim, hidden=32, depth=3, emb_dim=16, dropout=0.2,
                  label_dropout=0.1)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((5, 2)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(5), jnp.float32)
  labels = jnp.asarray(np.eye(3)[rng.integers(0, 3, 5)], jnp.float32) if label_dim else None
  params = model.init(jax.random.key(0), x, noise, labels)
  assert {"map_layer0", "layer0", "emb0", "out"} <= set(params["params"])
  out, feats = model.apply(params, x, noise, labels, return_features=True)
  assert out.shape == (5, 2) and out.dtype == jnp.float32 and feats.shape == (5, 32)
  assert np.max(np.abs(out)) < 1e-3  # near-zero output layer at init
  params = _perturb(params)
  rngs = lambda seed: {"dropout": jax.random.key(seed)}
  evals = model.apply(params, x, noise, labels)
  train = model.apply(params, x, noise, labels, train=True, rngs=rngs(0))
  np.testing.assert_array_equal(train, model.apply(params, x, noise, labels, train=True, rngs=rngs(0)))
  assert np.max(np.abs(train - evals)) > 1e-4
  np.testing.assert_array_equal(evals, model.apply(params, x, noise, labels, rngs=rngs(1)))
