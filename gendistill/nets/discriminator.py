"""Critics (discriminators) for the adversarial objectives, and DMD2's classifier head on a UNet bottleneck.

All critics return one real-valued logit per sample, [N] (float32), and are used purely through `apply`:

  MLPCritic(x [N, D], noise_labels=None, class_labels=None, train=False)      vectors (toy2d)
  ConvCritic(x [N, H, W, C], noise_labels=None, class_labels=None, train=False)  images
  BottleneckHead(features [N, h, w, C])                                       DMD2's head on the fake-score UNet's
                                                                              bottleneck (`return_features=True`)

Conditioning. `noise_conditioned=True` embeds `noise_labels` [N] (e.g. Diffusion-GAN's timestep t or c_noise(sigma))
with the positional embedding of the UNet and adds a learned projection of it to every hidden layer (a per-layer
bias); `noise_labels=None` then means 0. `label_dim > 0` makes the critic class-conditional through a projection
term (Miyato & Koyama 2018): logit = w^T h + <embed(y), h> with y one-hot [N, label_dim] (zeros = unconditional).
The critics have no normalisation layers, so samples are independent (what per-sample R1 norms need), unless
`minibatch_std` > 0: StyleGAN's minibatch standard deviation, the features' spread over each group of that many
consecutive samples appended as one more feature before the final dense layers, so that the critic can see a
generator whose samples are too alike. Groups are consecutive, so they stay inside one device's shard of a
batch-sharded input. In a class-conditional batch a group mixes classes, so the feature measures the spread between
classes more than within one (on digits it did not stop the GAN drawing one image per class).

`build_critic(cfg, spec)` makes the critic a `critic` config section (`critic_config()`) asks for.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from gendistill.nets import layers


def critic_config(**overrides) -> ml_collections.ConfigDict:
  """The keys of a `critic` config section with their defaults."""
  c = ml_collections.ConfigDict(dict(
      kind="auto",              # auto (mlp for vectors, conv for images) | mlp | conv
      hidden=256,               # MLP width; also the conv critic's final dense layer
      depth=3,                  # MLP hidden layers
      channels=32,              # conv critic base channels
      channel_mult=(1, 2, 2),   # conv critic: channels per resolution, 2x average-pool between them
      noise_conditioned=False,  # embed noise_labels (Diffusion-GAN t, or a noise level) into every layer
      noise_channels=64,        # size of the noise-level embedding
      minibatch_std=0,          # group size of StyleGAN's minibatch standard deviation feature; 0 = off
  ))
  c.update(overrides)
  return c


def _noise_embedding(noise_labels, n, channels):
  labels = jnp.zeros((n,), jnp.float32) if noise_labels is None else jnp.reshape(noise_labels, (n,))
  return layers.positional_embedding(labels.astype(jnp.float32), channels, endpoint=True)


def minibatch_std(h, group_size: int):
  """h [N, ...] -> h with one more channel (last axis): the std over each group of `group_size` consecutive samples
  of every feature, averaged over the features, broadcast to the group's samples (StyleGAN's minibatch std layer).

  The group is the largest divisor of N that is at most `group_size` (groups of 1 give the floor sqrt(1e-8)).
  """
  n = h.shape[0]
  group = max(g for g in range(1, min(group_size, n) + 1) if n % g == 0)
  y = jnp.reshape(h, (n // group, group, *h.shape[1:])).astype(jnp.float32)
  std = jnp.sqrt(jnp.var(y, axis=1) + 1e-8)                            # [N / G, ...]
  std = jnp.mean(jnp.reshape(std, (n // group, -1)), axis=1)           # [N / G]
  feature = jnp.repeat(std, group)                                     # [N]
  feature = jnp.broadcast_to(jnp.reshape(feature, (n,) + (1,) * (h.ndim - 1)), h.shape[:-1] + (1,))
  return jnp.concatenate([h, feature.astype(h.dtype)], axis=-1)


def _projection(h, class_labels, label_dim):
  """Miyato & Koyama's projection term <embed(y), h> (0 for zero labels)."""
  if not label_dim:
    return 0.0
  n = h.shape[0]
  y = jnp.zeros((n, label_dim), jnp.float32) if class_labels is None else jnp.reshape(class_labels, (n, label_dim))
  embed = nn.Dense(h.shape[-1], use_bias=False, name="label_projection")(y.astype(jnp.float32))
  return jnp.sum(embed * h, axis=-1)


class MLPCritic(nn.Module):
  """Leaky-ReLU MLP on flattened inputs: depth x [Dense(hidden) + noise bias -> LReLU(0.2)] -> Dense(1)."""
  hidden: int = 256
  depth: int = 3
  label_dim: int = 0
  noise_conditioned: bool = False
  noise_channels: int = 64
  minibatch_std: int = 0

  @nn.compact
  def __call__(self, x, noise_labels=None, class_labels=None, train: bool = False):
    del train
    n = x.shape[0]
    h = jnp.reshape(x, (n, -1)).astype(jnp.float32)
    emb = None
    if self.noise_conditioned:
      emb = nn.silu(nn.Dense(self.hidden, name="map_noise")(_noise_embedding(noise_labels, n, self.noise_channels)))
    for i in range(self.depth):
      if self.minibatch_std and i == self.depth - 1:
        h = minibatch_std(h, self.minibatch_std)
      h = nn.Dense(self.hidden, name=f"layer{i}")(h)
      if emb is not None:
        h = h + nn.Dense(self.hidden, name=f"noise{i}")(emb)
      h = nn.leaky_relu(h, 0.2)
    out = nn.Dense(1, name="out")(h)[:, 0]
    return out + _projection(h, class_labels, self.label_dim)


class ConvCritic(nn.Module):
  """A small DCGAN/StyleGAN-like conv critic.

  Per resolution level i: Conv3x3(channels * channel_mult[i]) (+ noise bias) -> LReLU(0.2), then a 2x average-pool
  before the next level (EDM's Conv2d(down=True): pool, then conv). Finally flatten -> Dense(hidden) -> LReLU ->
  Dense(1) (+ class projection on the hidden vector). Image sides must be divisible by 2^(levels - 1).
  """
  channels: int = 32
  channel_mult: Sequence[int] = (1, 2, 2)
  hidden: int = 256
  label_dim: int = 0
  noise_conditioned: bool = False
  noise_channels: int = 64
  minibatch_std: int = 0

  @nn.compact
  def __call__(self, x, noise_labels=None, class_labels=None, train: bool = False):
    del train
    n = x.shape[0]
    emb = None
    if self.noise_conditioned:
      emb = nn.silu(nn.Dense(self.hidden, name="map_noise")(_noise_embedding(noise_labels, n, self.noise_channels)))
    h = nn.leaky_relu(layers.Conv2d(self.channels * self.channel_mult[0], 1, name="stem")(x.astype(jnp.float32)),
                      0.2)
    for i, mult in enumerate(self.channel_mult):
      features = self.channels * mult
      h = layers.Conv2d(features, 3, down=i > 0, name=f"conv{i}")(h)
      if emb is not None:
        h = h + nn.Dense(features, name=f"noise{i}")(emb)[:, None, None, :]
      h = nn.leaky_relu(h, 0.2)
    if self.minibatch_std:
      h = minibatch_std(h, self.minibatch_std)
    h = nn.leaky_relu(nn.Dense(self.hidden, name="dense")(jnp.reshape(h, (n, -1))), 0.2)
    out = nn.Dense(1, name="out")(h)[:, 0]
    return out + _projection(h, class_labels, self.label_dim)


def _head_stages(size: int):
  """(kernel, stride, padding) of the head's two strided convolutions along one spatial axis of `size`.

  DMD2 (ADM-64 bottleneck, 8x8): Conv4x4 s2 p1 (8 -> 4), Conv4x4 s4 p0 (4 -> 1). Smaller or larger bottlenecks:
    stage 1: Conv4x4 s2 p1 (size -> size // 2) when size >= 2; a 1x1 conv when size == 1;
    stage 2: kernel = stride = min(4, size after stage 1), no padding: 4 -> 1, 2 -> 1, 1 -> 1, 8 -> 2, 16 -> 4.
  so 16 -> 8 -> 2, 8 -> 4 -> 1, 4 -> 2 -> 1, 2 -> 1 -> 1, 1 -> 1 -> 1. Whatever remains after the final 1x1
  convolution (only for bottlenecks larger than 8) is averaged into one logit.
  """
  if size >= 2:
    first = (4, 2, 1)
    size = (size + 2 - 4) // 2 + 1
  else:
    first = (1, 1, 0)
  k = min(4, size)
  return first, (k, k, 0)


class BottleneckHead(nn.Module):
  """DMD2's GAN classifier on the fake-score UNet's bottleneck: features [N, h, w, C] -> logits [N].

  Conv4x4 s2 -> GroupNorm -> SiLU -> Conv4x4 s4 -> GroupNorm -> SiLU -> Conv1x1 -> 1 logit (official code:
  768 channels, GroupNorm(32), 8x8 -> 4x4 -> 1x1). GroupNorm uses min(32, C // 4) groups so small channel counts
  work; strides and padding adapt to small bottlenecks as documented in `_head_stages`. `features=None` keeps the
  input's channel count (as DMD2 does).
  """
  features: Optional[int] = None
  num_groups: int = 32

  @nn.compact
  def __call__(self, x):
    n, height, width, channels = x.shape
    features = self.features or channels
    (k1h, s1h, p1h), (k2h, s2h, _) = _head_stages(height)
    (k1w, s1w, p1w), (k2w, s2w, _) = _head_stages(width)
    h = nn.Conv(features, (k1h, k1w), strides=(s1h, s1w), padding=((p1h, p1h), (p1w, p1w)), name="conv0")(
        x.astype(jnp.float32))
    h = nn.silu(layers.GroupNorm(self.num_groups, name="norm0")(h))
    h = nn.Conv(features, (k2h, k2w), strides=(s2h, s2w), padding="VALID", name="conv1")(h)
    h = nn.silu(layers.GroupNorm(self.num_groups, name="norm1")(h))
    logits = nn.Conv(1, (1, 1), name="out")(h)        # [N, h', w', 1]
    return jnp.mean(jnp.reshape(logits, (n, -1)), axis=1)


def build_critic(cfg: ml_collections.ConfigDict, spec) -> nn.Module:
  """The critic for data of `spec` (gendistill.data.DataSpec), class-conditional when the data is."""
  kind = cfg.kind
  if kind == "auto":
    kind = "mlp" if len(spec.shape) == 1 else "conv"
  common = dict(label_dim=spec.num_classes, noise_conditioned=cfg.noise_conditioned,
                noise_channels=cfg.noise_channels,
                minibatch_std=cfg.get("minibatch_std", 0))   # .get: runs saved before the key existed ran without
  if kind == "mlp":
    return MLPCritic(hidden=cfg.hidden, depth=cfg.depth, **common)
  if kind == "conv":
    if len(spec.shape) != 3:
      raise ValueError(f"The conv critic takes images [H, W, C]; got per-sample shape {spec.shape}.")
    return ConvCritic(channels=cfg.channels, channel_mult=tuple(cfg.channel_mult), hidden=cfg.hidden, **common)
  raise ValueError(f"Unknown critic.kind {cfg.kind!r}; expected auto, mlp or conv.")


__all__ = ["MLPCritic", "ConvCritic", "BottleneckHead", "build_critic", "critic_config", "minibatch_std"]
