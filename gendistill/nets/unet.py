"""DDPM++ UNet in the structure of EDM's SongUNet (Karras et al. 2022, `training/networks.py`): the raw
backbone F in D(x) = c_skip x + c_out F(c_in x; c_noise).

Submodule names follow SongUNet so that a converter for published EDM weights is a renaming plus layout
transposes: `map_noise`, `map_label`, `map_augment`, `map_layer0`, `map_layer1`; `enc/{res}x{res}_conv`,
`enc/{res}x{res}_down`, `enc/{res}x{res}_block{i}`; `dec/{res}x{res}_in0` (attention), `dec/{res}x{res}_in1`,
`dec/{res}x{res}_up`, `dec/{res}x{res}_block{i}`, `dec/{res}x{res}_aux_norm`, `dec/{res}x{res}_aux_conv`; inside
a block `norm0`, `conv0`, `affine`, `norm1`, `conv1`, `skip`, `norm2`, `qkv`, `proj`. Layouts: NHWC activations,
HWIO conv kernels (EDM OIHW), [in, out] dense kernels (EDM [out, in]), leaves `kernel`/`bias`/`scale` (EDM
`weight`/`bias`). The qkv channel layout is EDM's, so qkv/proj weights convert one to one.

Both published variants: DDPM++ (encoder_type 'standard', positional embedding, resample filter (1, 1)) and
NCSN++ (encoder_type 'residual' with `enc/{res}x{res}_aux_residual`, Fourier embedding, filter (1, 3, 3, 1),
channel_mult_noise 2). The PyTorch <-> Flax key mapping is gendistill/convert/mapping.py's table.

Deviations from SongUNet:
- SongUNet's encoder_type 'skip' and decoder_type 'skip' (used by no published EDM file) are not implemented.
- The Fourier embedding's random buffer (NCSN++) is the parameter `map_noise/freqs` behind a stop_gradient
  (so it converts like any weight and never trains); at init it is drawn deterministically (numpy seed 0,
  times 16), not from torch's generator.
- `class_labels=None` with label_dim > 0 means unconditional (all-zero labels).
- `map_augment` has no bias, so with augment_dim > 0 and augment_labels=None the labels are taken as zeros
  (equal to SongUNet skipping the layer, but the parameters always exist after init).
- With dtype bfloat16 the mapping network (noise/label embeddings, map_layer0/1) still runs in float32; the
  attention softmax and GroupNorm statistics are float32 as in EDM.
- Resampling is always the unfused path (fused_resample is never used by SongUNet's DDPM++/NCSN++ blocks).

Speed (2-core CPU, jaxlib 0.10.2 with the package's CPU XLA flags; a jitted forward+backward in train mode,
dropout on, threefry keys, batch 128 of 16x16x1, 10 classes; measured at real-time priority on a shared,
loaded machine, so the ranges are noise):
- 'digits' (1.23M parameters, 20 GFLOP per step): 0.47-0.54 s.
- 'digits_fast' (0.74M, 20 GFLOP): 0.39-0.52 s.
- for comparison, 32 channels with channel_mult (1, 2, 2) and num_blocks 2 (1.75M, 76 GFLOP): 1.13 s.
Steps this small are latency-bound (many small ops, and each dropout site adds sequential threefry loops), so
the time falls much less than the FLOPs: the 2-level model_channels=16 net (0.19M, 14.5 GFLOP) still took 0.33 s.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gendistill.nets import layers

Dtype = Any

PRESETS = {
    # For tests: 16x16 -> 8x8, one block per level, attention at 8x8.
    "tiny": dict(img_resolution=16, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                 attn_resolutions=(8,), dropout=0.1),
    # Scikit-learn digits resized to 16x16x1: 1.23M parameters (10 classes), 16/32/64/64 channels at 16/8/4/2
    # pixels: narrow at full resolution, where the FLOPs are, wide below, where the parameters are.
    "digits": dict(img_resolution=16, in_channels=1, out_channels=1, model_channels=16,
                   channel_mult=(1, 2, 4, 4), num_blocks=1, attn_resolutions=(4,), dropout=0.1),
    # The same without the 2x2 level: 0.74M parameters, about 20% faster per step.
    "digits_fast": dict(img_resolution=16, in_channels=1, out_channels=1, model_channels=16,
                        channel_mult=(1, 2, 4), num_blocks=1, attn_resolutions=(4,), dropout=0.1),
    # EDM's DDPM++ for CIFAR-10 at 32x32 (55.7M parameters unconditional).
    "cifar10": dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=128,
                    channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,), dropout=0.13),
}


# Optional `network` config keys of EDM's SongUNet (defaults: DDPM++ without augmentation labels); a config
# section without them builds the DDPM++ network it always did.
EDM_FIELDS = dict(augment_dim=0, channel_mult_emb=4, channel_mult_noise=1, encoder_type="standard",
                  resample_filter=(1, 1))


def edm_fields(cfg) -> dict:
  """The EDM_FIELDS values of a `network` config section (defaults where a key is absent)."""
  out = {k: cfg.get(k, v) for k, v in EDM_FIELDS.items()}
  out["resample_filter"] = tuple(out["resample_filter"])
  return out


class UNetBlock(nn.Module):
  """EDM's UNetBlock: GroupNorm-SiLU-Conv (with resampling), embedding added (or scale/shift), GroupNorm-SiLU-
  Dropout-Conv, skip connection, scaled sum; then optionally self-attention with its own residual."""
  out_channels: int
  up: bool = False
  down: bool = False
  attention: bool = False
  num_heads: Optional[int] = None
  channels_per_head: int = 64
  dropout: float = 0.0
  skip_scale: float = 1.0
  eps: float = 1e-5
  resample_filter: Sequence[float] = (1, 1)
  resample_proj: bool = False
  adaptive_scale: bool = True
  init_weight: float = 1.0
  init_zero_weight: float = 0.0
  init_attn_weight: Optional[float] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    cin, cout = x.shape[-1], self.out_channels
    conv = lambda features, kernel, weight, **kw: layers.Conv2d(  # pylint: disable=g-long-lambda
        features, kernel, resample_filter=self.resample_filter, init_weight=weight, dtype=self.dtype, **kw)
    norm = lambda name: layers.GroupNorm(eps=self.eps, dtype=self.dtype, name=name)

    orig = x
    x = conv(cout, 3, self.init_weight, up=self.up, down=self.down, name="conv0")(nn.silu(norm("norm0")(x)))
    params = nn.Dense(cout * (2 if self.adaptive_scale else 1), kernel_init=layers.xavier_uniform(self.init_weight),
                      dtype=self.dtype, param_dtype=jnp.float32, name="affine")(emb)
    params = params.astype(self.dtype)[:, None, None, :]
    if self.adaptive_scale:
      scale, shift = jnp.split(params, 2, axis=-1)
      x = nn.silu(shift + norm("norm1")(x) * (scale + 1))
    else:
      x = nn.silu(norm("norm1")(x + params))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = conv(cout, 3, self.init_zero_weight, name="conv1")(x)
    if cout != cin or self.up or self.down:
      kernel = 1 if self.resample_proj or cout != cin else 0
      orig = conv(cout, kernel, self.init_weight, up=self.up, down=self.down, name="skip")(orig)
    x = (x + orig) * self.skip_scale

    heads = self.num_heads if self.num_heads is not None else cout // self.channels_per_head
    if self.attention and heads:  # as EDM: fewer channels than one head means no attention layer
      attn_weight = self.init_attn_weight if self.init_attn_weight is not None else self.init_weight
      qkv = conv(cout * 3, 1, attn_weight, name="qkv")(norm("norm2")(x))
      a = layers.attention(qkv, heads)
      x = (conv(cout, 1, self.init_zero_weight, name="proj")(a) + x) * self.skip_scale
    return x


class _Embedding(nn.Module):
  """`map_noise`: EDM's PositionalEmbedding (endpoint=True) or FourierEmbedding (scale 16), output [cos, sin]."""
  num_channels: int
  embedding_type: str = "positional"

  @nn.compact
  def __call__(self, noise_labels):
    if self.embedding_type == "positional":
      return layers.positional_embedding(noise_labels, self.num_channels, endpoint=True)
    freqs = self.param("freqs", lambda _: jnp.asarray(layers.fourier_frequencies(self.num_channels, scale=16.0)))
    return layers.fourier_embedding(noise_labels, jax.lax.stop_gradient(freqs))


class _FusedDownConv(nn.Module):
  """EDM's Conv2d(kernel=k, down=True, fused_resample=True) (NCSN++'s `aux_residual`): a k x k convolution
  padded by k // 2 + (len(f) - 1) // 2, then the depthwise filter f f^T / sum(f)^2 at stride 2, unpadded."""
  features: int
  kernel: int = 3
  resample_filter: Sequence[float] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    k, cin = self.kernel, x.shape[-1]
    w = self.param("kernel", layers.xavier_uniform(1.0), (k, k, cin, self.features), jnp.float32)
    f = np.outer(self.resample_filter, self.resample_filter).astype(np.float32)
    f = f / f.sum()
    pad = k // 2 + (f.shape[0] - 1) // 2
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, w.astype(self.dtype), (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=dims)
    fk = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, self.features)), self.dtype)
    y = jax.lax.conv_general_dilated(y, fk, (2, 2), "VALID", dimension_numbers=dims,
                                     feature_group_count=self.features)
    b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y + b.astype(self.dtype)


class _Encoder(nn.Module):
  """SongUNet's `enc` ModuleDict (standard or residual encoder). Returns the list of skip activations."""
  img_resolution: int
  model_channels: int
  channel_mult: Sequence[int]
  num_blocks: int
  attn_resolutions: Sequence[int]
  block_kwargs: Any
  encoder_type: str = "standard"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    skips = []
    aux = x
    cout = x.shape[-1]
    for level, mult in enumerate(self.channel_mult):
      res = self.img_resolution >> level
      if level == 0:
        cout = self.model_channels
        x = layers.Conv2d(cout, 3, dtype=self.dtype, name=f"{res}x{res}_conv")(x)
      else:
        x = UNetBlock(cout, down=True, **self.block_kwargs, name=f"{res}x{res}_down")(x, emb, train)
        if self.encoder_type == "residual":
          conv = _FusedDownConv(cout, 3, tuple(self.block_kwargs["resample_filter"]), dtype=self.dtype,
                                name=f"{res}x{res}_aux_residual")
          x = aux = (x + conv(aux)) * float(np.sqrt(0.5))
      skips.append(x)
      for idx in range(self.num_blocks):
        cout = self.model_channels * mult
        x = UNetBlock(cout, attention=res in self.attn_resolutions, **self.block_kwargs,
                      name=f"{res}x{res}_block{idx}")(x, emb, train)
        skips.append(x)
    return skips


class _Decoder(nn.Module):
  """SongUNet's `dec` ModuleDict (standard decoder): consumes the skips, returns the output image."""
  img_resolution: int
  out_channels: int
  model_channels: int
  channel_mult: Sequence[int]
  num_blocks: int
  attn_resolutions: Sequence[int]
  block_kwargs: Any
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, skips, emb, train: bool = False):
    skips = list(skips)
    x = skips[-1]
    cout = x.shape[-1]
    out = None
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      res = self.img_resolution >> level
      if level == len(self.channel_mult) - 1:
        x = UNetBlock(cout, attention=True, **self.block_kwargs, name=f"{res}x{res}_in0")(x, emb, train)
        x = UNetBlock(cout, **self.block_kwargs, name=f"{res}x{res}_in1")(x, emb, train)
      else:
        x = UNetBlock(cout, up=True, **self.block_kwargs, name=f"{res}x{res}_up")(x, emb, train)
      for idx in range(self.num_blocks + 1):
        x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
        cout = self.model_channels * mult
        attn = idx == self.num_blocks and res in self.attn_resolutions
        x = UNetBlock(cout, attention=attn, **self.block_kwargs, name=f"{res}x{res}_block{idx}")(x, emb, train)
      if level == 0:
        tmp = layers.GroupNorm(eps=1e-6, dtype=self.dtype, name=f"{res}x{res}_aux_norm")(x)
        out = layers.Conv2d(self.out_channels, 3, init_weight=1e-5, dtype=self.dtype,
                            name=f"{res}x{res}_aux_conv")(nn.silu(tmp))
    return out


class UNet(nn.Module):
  """DDPM++ (EDM's SongUNet with the standard encoder/decoder). NHWC in, NHWC out (float32).

  __call__(x [N, H, W, in_channels], noise_labels [N] (= c_noise(sigma)), class_labels [N, label_dim] or None,
  train, augment_labels [N, augment_dim] or None, return_features) -> [N, H, W, out_channels], or
  (output, features) with features the output of the last encoder block, [N, H / 2^(L-1), W / 2^(L-1), C].
  Dropout and label dropout draw from the 'dropout' rng stream, in train mode only.
  """
  img_resolution: int
  in_channels: int
  out_channels: int
  label_dim: int = 0
  augment_dim: int = 0
  model_channels: int = 128
  channel_mult: Sequence[int] = (2, 2, 2)
  channel_mult_emb: int = 4
  num_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.10
  label_dropout: float = 0.0
  embedding_type: str = "positional"
  channel_mult_noise: int = 1
  encoder_type: str = "standard"
  resample_filter: Sequence[float] = (1, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, train: bool = False, augment_labels=None,
               return_features: bool = False):
    if self.embedding_type not in ("positional", "fourier"):
      raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {self.embedding_type!r}.")
    if self.encoder_type not in ("standard", "residual"):
      raise ValueError(f"encoder_type must be 'standard' or 'residual', got {self.encoder_type!r}.")
    if x.shape[1:] != (self.img_resolution, self.img_resolution, self.in_channels):
      raise ValueError(f"UNet expects [N, {self.img_resolution}, {self.img_resolution}, {self.in_channels}] "
                       f"inputs, got {x.shape}.")
    n = x.shape[0]
    emb_channels = self.model_channels * self.channel_mult_emb
    noise_channels = self.model_channels * self.channel_mult_noise
    dense = lambda features, name, use_bias=True: nn.Dense(  # pylint: disable=g-long-lambda
        features, use_bias=use_bias, kernel_init=layers.xavier_uniform(1.0), dtype=jnp.float32,
        param_dtype=jnp.float32, name=name)

    # Mapping (kept in float32: it is tiny).
    emb = _Embedding(noise_channels, self.embedding_type, name="map_noise")(jnp.reshape(noise_labels, (n,)))
    emb = layers.swap_halves(emb)  # [cos, sin] -> [sin, cos], as SongUNet.
    if self.label_dim:
      labels = (jnp.zeros((n, self.label_dim), jnp.float32) if class_labels is None
                else jnp.asarray(class_labels, jnp.float32).reshape(n, self.label_dim))
      if train and self.label_dropout:
        keep = jax.random.uniform(self.make_rng("dropout"), (n, 1)) >= self.label_dropout
        labels = labels * keep.astype(labels.dtype)
      emb = emb + dense(noise_channels, "map_label")(labels * np.sqrt(self.label_dim))
    if self.augment_dim:
      aug = (jnp.zeros((n, self.augment_dim), jnp.float32) if augment_labels is None
             else jnp.asarray(augment_labels, jnp.float32))
      emb = emb + dense(noise_channels, "map_augment", use_bias=False)(aug)
    emb = nn.silu(dense(emb_channels, "map_layer0")(emb))
    emb = nn.silu(dense(emb_channels, "map_layer1")(emb))

    block_kwargs = dict(
        num_heads=1, dropout=self.dropout, skip_scale=float(np.sqrt(0.5)), eps=1e-6,
        resample_filter=tuple(self.resample_filter), resample_proj=True, adaptive_scale=False,
        init_weight=1.0, init_zero_weight=1e-5, init_attn_weight=float(np.sqrt(0.2)), dtype=self.dtype)
    arch = dict(img_resolution=self.img_resolution, model_channels=self.model_channels,
                channel_mult=tuple(self.channel_mult), num_blocks=self.num_blocks,
                attn_resolutions=tuple(self.attn_resolutions), block_kwargs=block_kwargs, dtype=self.dtype)
    skips = _Encoder(**arch, encoder_type=self.encoder_type, name="enc")(x.astype(self.dtype), emb, train)
    features = skips[-1]
    out = _Decoder(out_channels=self.out_channels, **arch, name="dec")(skips, emb, train)
    out = out.astype(jnp.float32)
    return (out, features) if return_features else out
