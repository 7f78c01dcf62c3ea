"""ADM (Dhariwal & Nichol 2021) in the structure of EDM's `DhariwalUNet`: the raw backbone of EDM's ImageNet-64
teacher (`edm-imagenet-64x64-cond-adm.pkl`: 192 channels, channel_mult (1, 2, 3, 4), 3 blocks per level,
attention at 32, 16 and 8 pixels, 64 channels per head).

Submodule names follow DhariwalUNet (`map_noise`, `map_augment`, `map_layer0`, `map_layer1`, `map_label`,
`enc/{res}x{res}_conv|_down|_block{i}`, `dec/{res}x{res}_in0|_in1|_up|_block{i}`, `out_norm`, `out_conv`), so the
PyTorch <-> Flax mapping is the same renaming and layout table as SongUNet's (gendistill/convert/mapping.py). The
blocks are unet.py's UNetBlock (same conv, GroupNorm and attention code) with ADM's settings: adaptive
scale/shift, GroupNorm eps 1e-5, skip scale 1, heads of 64 channels, attention in every block of an attention
resolution (encoder and decoder), a 1x1 skip projection only where the channel count changes.

Differences from SongUNet: the positional embedding has endpoint=False and no sin/cos swap; the label enters
after map_layer1 (Linear without bias, no sqrt(label_dim) scaling), followed by SiLU.
Deviation: parameters are initialised as in SongUNet (xavier-uniform, zero biases), not with ADM's
kaiming-uniform(sqrt(1/3)) weights and biases; converted weights are unaffected.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gendistill.nets import layers
from gendistill.nets.unet import UNetBlock

Dtype = Any

PRESETS = {
    # For tests: 16x16 -> 8x8; heads have 64 channels (fewer channels: no attention layer, as in EDM).
    "tiny": dict(img_resolution=16, model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,),
                 dropout=0.0),
    # EDM's ImageNet-64 ADM (296M parameters, 1000 classes).
    "imagenet64": dict(img_resolution=64, in_channels=3, out_channels=3, model_channels=192,
                       channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8), dropout=0.1),
}


def fields(cfg, spec) -> dict:
  """DhariwalUNet's fields from a `network` config section (kind 'adm') and the data spec."""
  height, width, channels = spec.shape
  if height != width:
    raise ValueError(f"DhariwalUNet needs square images; got {spec.shape}.")
  return dict(img_resolution=height, in_channels=channels, out_channels=channels, label_dim=spec.num_classes,
              augment_dim=cfg.get("augment_dim", 0), model_channels=cfg.model_channels,
              channel_mult=tuple(cfg.channel_mult), channel_mult_emb=cfg.get("channel_mult_emb", 4),
              num_blocks=cfg.num_blocks, attn_resolutions=tuple(cfg.attn_resolutions), dropout=cfg.dropout,
              label_dropout=cfg.label_dropout)


class _Levels(nn.Module):
  img_resolution: int
  model_channels: int
  channel_mult: Sequence[int]
  num_blocks: int
  attn_resolutions: Sequence[int]
  channels_per_head: int
  dropout: float
  dtype: Dtype

  def block(self, cout, name, **extra):
    return UNetBlock(cout, channels_per_head=self.channels_per_head, dropout=self.dropout, dtype=self.dtype,
                     **extra, name=name)


class _Encoder(_Levels):
  """DhariwalUNet's `enc`: every module's output is a skip."""

  @nn.compact
  def __call__(self, h, emb, train: bool = False):
    skips = []
    cout = h.shape[-1]
    for level, mult in enumerate(self.channel_mult):
      res = self.img_resolution >> level
      if level == 0:
        cout = self.model_channels * mult
        h = layers.Conv2d(cout, 3, dtype=self.dtype, name=f"{res}x{res}_conv")(h)
      else:
        h = self.block(cout, f"{res}x{res}_down", down=True)(h, emb, train)
      skips.append(h)
      for idx in range(self.num_blocks):
        cout = self.model_channels * mult
        h = self.block(cout, f"{res}x{res}_block{idx}", attention=res in self.attn_resolutions)(h, emb, train)
        skips.append(h)
    return skips


class _Decoder(_Levels):
  """DhariwalUNet's `dec`."""

  @nn.compact
  def __call__(self, skips, emb, train: bool = False):
    skips = list(skips)
    h = skips[-1]
    cout = h.shape[-1]
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      res = self.img_resolution >> level
      if level == len(self.channel_mult) - 1:
        h = self.block(cout, f"{res}x{res}_in0", attention=True)(h, emb, train)
        h = self.block(cout, f"{res}x{res}_in1")(h, emb, train)
      else:
        h = self.block(cout, f"{res}x{res}_up", up=True)(h, emb, train)
      for idx in range(self.num_blocks + 1):
        h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
        cout = self.model_channels * mult
        h = self.block(cout, f"{res}x{res}_block{idx}", attention=res in self.attn_resolutions)(h, emb, train)
    return h


class DhariwalUNet(nn.Module):
  """EDM's DhariwalUNet. Same call contract as unet.UNet (NHWC, noise_labels = c_noise(sigma))."""
  img_resolution: int
  in_channels: int
  out_channels: int
  label_dim: int = 0
  augment_dim: int = 0
  model_channels: int = 192
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  channel_mult_emb: int = 4
  num_blocks: int = 3
  attn_resolutions: Sequence[int] = (32, 16, 8)
  dropout: float = 0.10
  label_dropout: float = 0.0
  channels_per_head: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, train: bool = False, augment_labels=None,
               return_features: bool = False):
    if x.shape[1:] != (self.img_resolution, self.img_resolution, self.in_channels):
      raise ValueError(f"DhariwalUNet expects [N, {self.img_resolution}, {self.img_resolution}, "
                       f"{self.in_channels}] inputs, got {x.shape}.")
    n = x.shape[0]
    emb_channels = self.model_channels * self.channel_mult_emb
    dense = lambda features, name, use_bias=True: nn.Dense(  # pylint: disable=g-long-lambda
        features, use_bias=use_bias, kernel_init=layers.xavier_uniform(1.0), dtype=jnp.float32,
        param_dtype=jnp.float32, name=name)

    # Mapping (float32).
    emb = layers.positional_embedding(jnp.reshape(noise_labels, (n,)), self.model_channels, endpoint=False)
    if self.augment_dim:
      aug = (jnp.zeros((n, self.augment_dim), jnp.float32) if augment_labels is None
             else jnp.asarray(augment_labels, jnp.float32))
      emb = emb + dense(self.model_channels, "map_augment", use_bias=False)(aug)
    emb = nn.silu(dense(emb_channels, "map_layer0")(emb))
    emb = dense(emb_channels, "map_layer1")(emb)
    if self.label_dim:
      labels = (jnp.zeros((n, self.label_dim), jnp.float32) if class_labels is None
                else jnp.asarray(class_labels, jnp.float32).reshape(n, self.label_dim))
      if train and self.label_dropout:
        keep = jax.random.uniform(self.make_rng("dropout"), (n, 1)) >= self.label_dropout
        labels = labels * keep.astype(labels.dtype)
      emb = emb + dense(emb_channels, "map_label", use_bias=False)(labels)
    emb = nn.silu(emb)

    arch = dict(img_resolution=self.img_resolution, model_channels=self.model_channels,
                channel_mult=tuple(self.channel_mult), num_blocks=self.num_blocks,
                attn_resolutions=tuple(self.attn_resolutions), channels_per_head=self.channels_per_head,
                dropout=self.dropout, dtype=self.dtype)
    skips = _Encoder(**arch, name="enc")(x.astype(self.dtype), emb, train)
    features = skips[-1]
    h = _Decoder(**arch, name="dec")(skips, emb, train)
    h = nn.silu(layers.GroupNorm(eps=1e-5, dtype=self.dtype, name="out_norm")(h))
    out = layers.Conv2d(self.out_channels, 3, dtype=self.dtype, name="out_conv")(h).astype(jnp.float32)
    return (out, features) if return_features else out
