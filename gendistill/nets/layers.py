"""Building blocks shared by the backbones: EDM-style initialisers, Conv2d with resampling, GroupNorm,
noise embeddings, resampling and the attention operation.

The conventions follow EDM's `training/networks.py` (Karras et al. 2022) so that published weights map one
to one, with Flax's layouts: NHWC activations, HWIO convolution kernels (EDM: OIHW), [in, out] dense kernels
(EDM: [out, in]) and parameter leaves named `kernel`, `bias`, `scale` (EDM: `weight`, `bias`).

CPU notes (see the style guide): bias additions are written on 2-D views (so the bias gradient is a 2-D
reduction), GroupNorm statistics on a reshaped view, average pooling as reshape-mean and nearest upsampling
as a broadcast.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def xavier_uniform(init_weight: float = 1.0):
  """EDM's `weight_init(mode='xavier_uniform') * init_weight`: U(-a, a), a = init_weight sqrt(6 / (fan_in + fan_out)).

  Fans count the receptive field, as in EDM (fan_in = in * k * k, fan_out = out * k * k).
  """
  return nn.initializers.variance_scaling(init_weight**2, "fan_avg", "uniform")


def _add_bias(x, bias):
  """x + bias over the last axis, written on a 2-D view so that the bias gradient is a 2-D reduction."""
  shape = x.shape
  return (x.reshape(-1, shape[-1]) + bias).reshape(shape)


# ----------------------------------------------------------------------------------------------------------
# Resampling.


def _resample_filter_2d(resample_filter: Sequence[float]) -> np.ndarray:
  f = np.asarray(resample_filter, np.float32)
  return np.outer(f, f) / f.sum() ** 2


def downsample(x, resample_filter: Sequence[float] = (1, 1)):
  """EDM's `Conv2d(down=True)` resampling of NHWC `x`: depthwise filter f f^T / sum(f)^2, stride 2.

  For the DDPM++ filter (1, 1) this is a 2x2 average pool, written as a reshape-mean.
  """
  n, h, w, c = x.shape
  if tuple(resample_filter) == (1, 1):
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).astype(x.dtype)
  f = _resample_filter_2d(resample_filter)
  pad = (f.shape[0] - 1) // 2
  kernel = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(2, 2), padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upsample(x, resample_filter: Sequence[float] = (1, 1)):
  """EDM's `Conv2d(up=True)` resampling of NHWC `x`: transposed depthwise conv with 4 f f^T / sum(f)^2, stride 2.

  For the DDPM++ filter (1, 1) this is nearest-neighbour 2x upsampling, written as a broadcast.
  """
  n, h, w, c = x.shape
  if tuple(resample_filter) == (1, 1):
    return jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)
  f = _resample_filter_2d(resample_filter) * 4
  pad = (f.shape[0] - 1) // 2
  # conv_transpose2d(stride 2, padding p) == dilated-input convolution with the flipped kernel, padding k-1-p.
  kernel = jnp.asarray(np.tile(f[::-1, ::-1, None, None], (1, 1, 1, c)), x.dtype)
  edge = f.shape[0] - 1 - pad
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((edge, edge), (edge, edge)), lhs_dilation=(2, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


# ----------------------------------------------------------------------------------------------------------
# Layers.


class Conv2d(nn.Module):
  """EDM's Conv2d (non-fused path): optional up/down resampling of the input, then a k x k convolution.

  kernel=0 means resampling only (no parameters). Kernel layout HWIO; padding k // 2; bias init zero.
  """
  features: int
  kernel: int = 3
  use_bias: bool = True
  up: bool = False
  down: bool = False
  resample_filter: Sequence[float] = (1, 1)
  init_weight: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    assert not (self.up and self.down)
    x = x.astype(self.dtype)
    if self.up:
      x = upsample(x, self.resample_filter)
    if self.down:
      x = downsample(x, self.resample_filter)
    if not self.kernel:
      return x
    cin = x.shape[-1]
    k = self.kernel
    w = self.param("kernel", xavier_uniform(self.init_weight), (k, k, cin, self.features), jnp.float32)
    w = w.astype(self.dtype)
    if k == 1:
      y = (x.reshape(-1, cin) @ w[0, 0]).reshape(*x.shape[:-1], self.features)
    else:
      y = jax.lax.conv_general_dilated(
          x, w, window_strides=(1, 1), padding=((k // 2, k // 2), (k // 2, k // 2)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = _add_bias(y, b.astype(self.dtype))
    return y


class GroupNorm(nn.Module):
  """EDM's GroupNorm: num_groups = min(num_groups, C // min_channels_per_group); computed in float32."""
  num_groups: int = 32
  min_channels_per_group: int = 4
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, c = x.shape[0], x.shape[-1]
    groups = max(1, min(self.num_groups, c // self.min_channels_per_group))
    if c % groups:
      raise ValueError(f"GroupNorm: {c} channels do not split into {groups} groups (as in EDM, C must be "
                       "divisible by min(32, C // 4)).")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    # Statistics on an [N, L, G, C/G] view (L = H * W). A custom VJP with fewer reductions, and one-pass
    # statistics, were no faster in a whole UNet training step on CPU, so this stays plain (and exact).
    xr = x.astype(jnp.float32).reshape(n, -1, groups, c // groups)
    mean = xr.mean(axis=(1, 3), keepdims=True)
    centred = xr - mean
    var = jnp.square(centred).mean(axis=(1, 3), keepdims=True)
    y = (centred * jax.lax.rsqrt(var + self.eps)).reshape(n, -1, c) * scale + bias
    return y.reshape(x.shape).astype(self.dtype)


# ----------------------------------------------------------------------------------------------------------
# Embeddings of the noise level.


def positional_embedding(x, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
  """EDM's PositionalEmbedding: [cos(x f), sin(x f)], f_i = (1 / max_positions)^(i / (C/2 - endpoint))."""
  half = num_channels // 2
  freqs = np.arange(half, dtype=np.float32) / (half - (1 if endpoint else 0))
  freqs = (1.0 / max_positions) ** freqs
  x = jnp.asarray(x, jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
  return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


def fourier_frequencies(num_channels: int, scale: float = 16.0, seed: int = 0) -> np.ndarray:
  """A deterministic stand-in for EDM's random FourierEmbedding buffer, randn(C/2) * scale."""
  return np.random.default_rng(seed).standard_normal(num_channels // 2).astype(np.float32) * scale


def fourier_embedding(x, freqs):
  """EDM's FourierEmbedding: [cos(2 pi x f), sin(2 pi x f)]."""
  x = jnp.asarray(x, jnp.float32)[:, None] * (2 * np.pi * jnp.asarray(freqs, jnp.float32))[None, :]
  return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


def swap_halves(emb):
  """SongUNet's `emb.reshape(N, 2, -1).flip(1)`: [cos, sin] -> [sin, cos]."""
  n = emb.shape[0]
  return emb.reshape(n, 2, -1)[:, ::-1].reshape(emb.shape)


# ----------------------------------------------------------------------------------------------------------
# Attention.


def attention(qkv, num_heads: int = 1):
  """EDM UNetBlock self-attention on the output of the qkv 1x1 convolution, NHWC [N, H, W, 3C] -> [N, H, W, C].

  The channel layout is EDM's `reshape(N * heads, C / heads, 3, H * W)`: channel index
  ((head * C/heads) + c) * 3 + {0: q, 1: k, 2: v}. Logits are scaled by 1/sqrt(C / heads); the softmax is in
  float32 (as EDM's AttentionOp). The result's channel index is head * C/heads + c.
  """
  n, h, w, c3 = qkv.shape
  c = c3 // 3
  qkv = qkv.reshape(n, h * w, num_heads, c // num_heads, 3)
  q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]  # [N, L, heads, ch]
  scale = 1.0 / math.sqrt(c // num_heads)
  logits = jnp.einsum("nqhc,nkhc->nhqk", q.astype(jnp.float32), k.astype(jnp.float32) * scale)
  weights = jax.nn.softmax(logits, axis=-1).astype(qkv.dtype)
  out = jnp.einsum("nhqk,nkhc->nqhc", weights, v)
  return out.reshape(n, h, w, c)
