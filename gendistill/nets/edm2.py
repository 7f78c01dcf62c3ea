"""EDM2's magnitude-preserving UNet (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models"), written from the paper and the behaviour of NVlabs/edm2 `training/networks_edm2.py`
(`UNet` and `Precond`), so that published EDM2 weights convert one to one and give the same outputs.

`EDM2` is a raw backbone F with the backbone contract of nets/ (NHWC in, NHWC float32 out):
  __call__(x [N, R, R, img_channels], noise_labels [N] (= c_noise), class_labels [N, label_dim] or None,
           train, augment_labels (must be None), return_features) -> F, or (F, features)
  logvar(noise_labels [N]) -> [N]   the uncertainty head u(sigma) (EDM2's `logvar_fourier`/`logvar_linear`).
It holds the whole of EDM2's `Precond` (the UNet under `unet`, the uncertainty head beside it), so that one
`Denoiser(backbone=EDM2(...), preconditioning='edm', sigma_data=0.5)` is EDM2's Precond: its c_skip, c_out,
c_in and c_noise = log(sigma) / 4 are exactly EDM's (diffusion/precond.py). `logvar_fn(denoiser)` gives the
log-variance at the denoiser level. Unconditional calls (labels None or all-zero rows) equal EDM2's
`class_labels=None`, which feeds zero labels.

Magnitude-preserving pieces (paper equation numbers): MP-SiLU silu(x) / 0.596 (81); MP-sum
lerp(a, b, t) / sqrt((1-t)^2 + t^2) (88); MP-concat (103); Fourier features sqrt(2) cos(f c_noise + phase) with
fixed random f, phase (75); MP convolution / linear layer (47) with weight normalisation (66): the weight is
stored as trained and, at every forward, each output channel's weight vector w_o is divided by
eps + |w_o| / sqrt(fan_in) (eps 1e-4), then scaled by gain / sqrt(fan_in). This is the official forward in eval
mode. The official *training* forward also overwrites the stored weight with its normalised value before use
("forced" weight normalisation); a functional equivalent for students trained here is
`forced_weight_normalization(variables)` after each optimiser update (not applied automatically; the forward
result does not depend on it beyond the eps term). Learned gains: `out_gain` (output layer) and each block's
`emb_gain` (the embedding's scale modulation), both initialised to zero as in EDM2.

Variables. Trainable leaves under 'params'; the Fourier features' fixed frequencies and phases under
'buffers' (EDM2 registers them as buffers; drawn at init from the init key, loaded from a file on conversion;
the forward stops their gradient). Layouts as elsewhere in nets/: NHWC activations, HWIO convolution weights,
[in, out] linear weights. Leaf names keep EDM2's (`weight`, `emb_gain`, `out_gain`, `freqs`, `phases`).
The mapping between EDM2's `Precond.state_dict()` and our variables (of the Denoiser, whose backbone submodule
is `backbone`) is the one table below, `MAPPING_TABLE`, implemented by `official_key`/`flax_path` and used by
`from_torch_state_dict` / `to_torch_state_dict`.

Architecture (EDM2 Figure 21). Channels per level cblock = model_channels * channel_mult; the noise
embedding has cblock[0] channels (model_channels * channel_mult_noise if given), the block embedding
max(cblock) (model_channels * channel_mult_emb if given). Encoder at resolution R = img_resolution >> level:
level 0 starts with `enc/RxR_conv` (3x3 MPConv on [x, ones]), other levels with `enc/RxR_down` (a block with
2x2 average-pool downsampling); then `enc/RxR_block{i}`, i < num_blocks. Decoder from the lowest resolution:
`dec/RxR_in0` (always with attention), `dec/RxR_in1` at the lowest level, `dec/RxR_up` (nearest 2x
upsampling) at the others, then `dec/RxR_block{i}`, i <= num_blocks, each after an MP-concat with the
matching skip; `out_conv` (3x3, gain out_gain). Attention (heads = channels / channels_per_head) in the blocks
at `attn_resolutions`, on pixel-normalised q, k, v. Encoder blocks pixel-normalise the main path after their
1x1 `conv_skip`; decoder blocks apply `conv_skip` (when the channels change) after the residual branch.
Activations are clipped to +-clip_act after every block.

Published pixel-space ImageNet-64 models (`PRESETS`, from NVlabs/edm2 train_edm2.py, network
`training.networks_edm2.Precond`): img_resolution 64, img_channels 3, label_dim 1000, channel_mult (1, 2, 3, 4),
num_blocks 3, attn_resolutions (16, 8), channels_per_head 64, label_balance 0.5, concat_balance 0.5,
res_balance 0.3, attn_balance 0.3, clip_act 256, logvar_channels 128, sigma_data 0.5, and
  edm2-img64-xs  model_channels 128, dropout 0.00  (the autoguidance guide network)
  edm2-img64-s   model_channels 192, dropout 0.00
  edm2-img64-m   model_channels 256, dropout 0.10
  edm2-img64-l   model_channels 320, dropout 0.10
  edm2-img64-xl  model_channels 384, dropout 0.10
The latent 512x512 models are the same network on the 4-channel 64x64 latents of a VAE (img_channels 4,
img_resolution 64, model_channels 64..448, dropout 0 or 0.1): this module needs only the autoencoder for them.

Published sampler settings (NVlabs/edm2 generate_images.py): EDM's Heun sampler with 32 steps (63 network
evaluations), sigma_min 0.002, sigma_max 80, rho 7, S_churn 0; guidance as D_guide + w (D - D_guide), where
D_guide is a separate network (an unconditional one, or for autoguidance a smaller/shorter-trained one, e.g.
edm2-img64-s with an edm2-img64-xs guide, w 1.7 for FID); the reported img64 FIDs use no guidance.

Deviations: `label_dropout` (training only, default 0) is ours, for students that learn the unconditional
model too; EDM2 trains unconditional models separately. With dtype bfloat16 the embeddings stay float32 and
normalisations compute their norms in float32 (EDM2 runs float16 on GPUs, float32 elsewhere).
"""
import math
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gendistill.diffusion import precond
from gendistill.nets import layers

Dtype = Any

# Everything an EDM2 Precond is built from, with EDM2's defaults (Precond / UNet / Block constructor arguments
# of the same names, except img_channels, img_resolution and label_dim, which have no default).
DEFAULTS = dict(
    model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_noise=None, channel_mult_emb=None,
    num_blocks=3, attn_resolutions=(16, 8), label_balance=0.5, concat_balance=0.5, channels_per_head=64,
    dropout=0.0, res_balance=0.3, attn_balance=0.3, clip_act=256.0, logvar_channels=128)

# The EDM2-only keys of a `network` config section (the shared ones -- model_channels, channel_mult, ... -- are
# declared with the SongUNet's), with EDM2's defaults.
CONFIG_FIELDS = {k: DEFAULTS[k] for k in ("label_balance", "concat_balance", "channels_per_head", "res_balance",
                                          "attn_balance", "clip_act", "logvar_channels")}

_IMG64 = dict(img_resolution=64, img_channels=3, label_dim=1000, channel_mult=(1, 2, 3, 4), num_blocks=3,
              attn_resolutions=(16, 8))
PRESETS = {
    "edm2-img64-xs": dict(_IMG64, model_channels=128, dropout=0.0),
    "edm2-img64-s": dict(_IMG64, model_channels=192, dropout=0.0),
    "edm2-img64-m": dict(_IMG64, model_channels=256, dropout=0.1),
    "edm2-img64-l": dict(_IMG64, model_channels=320, dropout=0.1),
    "edm2-img64-xl": dict(_IMG64, model_channels=384, dropout=0.1),
    # For tests: 8x8 -> 4x4, one block per level, attention at 4x4, two heads of 8 channels.
    "tiny": dict(img_resolution=8, img_channels=3, label_dim=4, model_channels=8, channel_mult=(1, 2),
                 num_blocks=1, attn_resolutions=(4,), channels_per_head=8, logvar_channels=8),
}

# EDM2 Precond constructor arguments that do not change the network's function in float32 eval mode.
_IGNORED_OFFICIAL_KWARGS = ("use_fp16", "sigma_data", "class_name")


# ------------------------------------------------------------------------------------------------------------
# Magnitude-preserving operations.


def normalize(x, axis, eps: float = 1e-4):
  """x / (eps + |x| / sqrt(n)) with the norm over `axis` (n elements), computed in float32."""
  axis = tuple(a % x.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
  n = math.prod(x.shape[a] for a in axis)
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
  norm = eps + norm * np.float32(np.sqrt(1.0 / n))
  return x / norm.astype(x.dtype)


def mp_silu(x):
  return nn.silu(x) / 0.596


def mp_sum(a, b, t: float = 0.5):
  return (a + t * (b - a)) / np.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a, b, t: float = 0.5):
  """Magnitude-preserving concatenation over the channel (last) axis."""
  na, nb = a.shape[-1], b.shape[-1]
  c = np.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
  return jnp.concatenate([(c / np.sqrt(na) * (1 - t)) * a, (c / np.sqrt(nb) * t) * b], axis=-1)


def _weight_axes(ndim: int) -> Tuple[int, ...]:
  return tuple(range(ndim - 1))  # every axis but the output channels (last in HWIO and [in, out])


class MPFourier(nn.Module):
  """sqrt(2) cos(2 pi (x f + phase)) with fixed f ~ N(0, bandwidth^2), phase ~ U(0, 1) (stored as 2 pi f, 2 pi phase)."""
  num_channels: int
  bandwidth: float = 1.0

  @nn.compact
  def __call__(self, x):
    shape = (self.num_channels,)
    freqs = self.variable("buffers", "freqs", lambda: 2 * np.pi * self.bandwidth * jax.random.normal(
        self.make_rng("params"), shape, jnp.float32))
    phases = self.variable("buffers", "phases", lambda: 2 * np.pi * jax.random.uniform(
        self.make_rng("params"), shape, jnp.float32))
    freqs, phases = jax.lax.stop_gradient(freqs.value), jax.lax.stop_gradient(phases.value)
    y = jnp.asarray(x, jnp.float32)[:, None] * freqs[None, :] + phases[None, :]
    return jnp.cos(y) * np.float32(np.sqrt(2))


class MPConv(nn.Module):
  """Magnitude-preserving linear layer (kernel ()) or k x k convolution (kernel (k, k)), padding k // 2, no bias.

  The weight (init N(0, 1) as EDM2) is normalised per output channel at every call, then scaled by
  gain / sqrt(fan_in).
  """
  out_channels: int
  kernel: Tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x, gain=1.0):
    cin = x.shape[-1]
    w = self.param("weight", nn.initializers.normal(1.0), (*self.kernel, cin, self.out_channels), jnp.float32)
    w = normalize(w, _weight_axes(w.ndim))
    w = w * (gain / np.sqrt(w.size // self.out_channels))
    w = w.astype(x.dtype)
    if not self.kernel:
      return x @ w
    if self.kernel == (1, 1):
      return (x.reshape(-1, cin) @ w[0, 0]).reshape(*x.shape[:-1], self.out_channels)
    pad = [(k // 2, k // 2) for k in self.kernel]
    return jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=pad,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Block(nn.Module):
  """EDM2's encoder ('enc') or decoder ('dec') block with optional resampling and self-attention."""
  out_channels: int
  flavor: str = "enc"
  resample_mode: str = "keep"
  attention: bool = False
  channels_per_head: int = 64
  dropout: float = 0.0
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: Optional[float] = 256.0

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    cout = self.out_channels
    conv = lambda c, k, name: MPConv(c, k, name=name)  # pylint: disable=g-long-lambda
    if self.resample_mode == "down":
      x = layers.downsample(x)
    elif self.resample_mode == "up":
      x = layers.upsample(x)
    skip = conv(cout, (1, 1), "conv_skip") if x.shape[-1] != cout else None
    if self.flavor == "enc":
      if skip is not None:
        x = skip(x)
      x = normalize(x, -1)  # pixel norm

    y = conv(cout, (3, 3), "conv_res0")(mp_silu(x))
    gain = self.param("emb_gain", nn.initializers.zeros, (), jnp.float32)
    c = conv(cout, (), "emb_linear")(emb, gain=gain) + 1  # [N, cout], float32
    y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
    if self.dropout:
      y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = conv(cout, (3, 3), "conv_res1")(y)

    if self.flavor == "dec" and skip is not None:
      x = skip(x)
    x = mp_sum(x, y, self.res_balance)

    if self.attention:
      heads = cout // self.channels_per_head
      n, h, w, _ = x.shape
      qkv = conv(3 * cout, (1, 1), "attn_qkv")(x)
      # EDM2's channel layout (head, channel, q/k/v), as layers.attention; pixel norm within each head.
      qkv = normalize(qkv.reshape(n, h, w, heads, cout // heads, 3), -2).reshape(n, h, w, 3 * cout)
      y = conv(cout, (1, 1), "attn_proj")(layers.attention(qkv, heads))
      x = mp_sum(x, y, self.attn_balance)

    if self.clip_act is not None:
      x = jnp.clip(x, -self.clip_act, self.clip_act)
    return x


class _Encoder(nn.Module):
  """EDM2's `enc` ModuleDict; returns the skip activations (the last one is the encoder's output)."""
  img_resolution: int
  cblock: Tuple[int, ...]
  num_blocks: int
  attn_resolutions: Tuple[int, ...]
  block_kwargs: Any

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    skips = []
    for level, channels in enumerate(self.cblock):
      res = self.img_resolution >> level
      if level == 0:
        x = MPConv(channels, (3, 3), name=f"{res}x{res}_conv")(x)
      else:
        x = Block(x.shape[-1], "enc", "down", **self.block_kwargs, name=f"{res}x{res}_down")(x, emb, train)
      skips.append(x)
      for idx in range(self.num_blocks):
        x = Block(channels, "enc", attention=res in self.attn_resolutions, **self.block_kwargs,
                  name=f"{res}x{res}_block{idx}")(x, emb, train)
        skips.append(x)
    return skips


class _Decoder(nn.Module):
  """EDM2's `dec` ModuleDict: consumes the skips, returns the last block's output."""
  img_resolution: int
  cblock: Tuple[int, ...]
  num_blocks: int
  attn_resolutions: Tuple[int, ...]
  concat_balance: float
  block_kwargs: Any

  @nn.compact
  def __call__(self, skips, emb, train: bool = False):
    skips = list(skips)
    x = skips[-1]
    for level, channels in reversed(list(enumerate(self.cblock))):
      res = self.img_resolution >> level
      cout = x.shape[-1]
      if level == len(self.cblock) - 1:
        x = Block(cout, "dec", attention=True, **self.block_kwargs, name=f"{res}x{res}_in0")(x, emb, train)
        x = Block(cout, "dec", **self.block_kwargs, name=f"{res}x{res}_in1")(x, emb, train)
      else:
        x = Block(cout, "dec", "up", **self.block_kwargs, name=f"{res}x{res}_up")(x, emb, train)
      for idx in range(self.num_blocks + 1):
        x = mp_cat(x, skips.pop().astype(x.dtype), self.concat_balance)
        x = Block(channels, "dec", attention=res in self.attn_resolutions, **self.block_kwargs,
                  name=f"{res}x{res}_block{idx}")(x, emb, train)
    return x


class _Architecture(nn.Module):
  """The architecture fields shared by `UNet` and `EDM2` (declared once)."""
  img_resolution: int
  img_channels: int
  label_dim: int = 0
  model_channels: int = 192
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  channel_mult_noise: Optional[int] = None
  channel_mult_emb: Optional[int] = None
  num_blocks: int = 3
  attn_resolutions: Sequence[int] = (16, 8)
  label_balance: float = 0.5
  concat_balance: float = 0.5
  channels_per_head: int = 64
  dropout: float = 0.0
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: Optional[float] = 256.0
  label_dropout: float = 0.0
  dtype: Dtype = jnp.float32


class UNet(_Architecture):
  """EDM2's `UNet` (Figure 21): see the module docstring. Inputs NHWC; output float32."""

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, train: bool = False):
    n = x.shape[0]
    cblock = tuple(self.model_channels * m for m in self.channel_mult)
    cnoise = self.model_channels * self.channel_mult_noise if self.channel_mult_noise else cblock[0]
    cemb = self.model_channels * self.channel_mult_emb if self.channel_mult_emb else max(cblock)
    out_gain = self.param("out_gain", nn.initializers.zeros, (), jnp.float32)

    # Embedding (float32).
    emb = MPConv(cemb, name="emb_noise")(MPFourier(cnoise, name="emb_fourier")(jnp.reshape(noise_labels, (n,))))
    if self.label_dim:
      labels = (jnp.zeros((n, self.label_dim), jnp.float32) if class_labels is None
                else jnp.asarray(class_labels, jnp.float32).reshape(n, self.label_dim))
      if train and self.label_dropout:
        keep = jax.random.uniform(self.make_rng("dropout"), (n, 1)) >= self.label_dropout
        labels = labels * keep.astype(labels.dtype)
      emb = mp_sum(emb, MPConv(cemb, name="emb_label")(labels * np.sqrt(self.label_dim)), self.label_balance)
    emb = mp_silu(emb)

    block_kwargs = dict(channels_per_head=self.channels_per_head, dropout=self.dropout,
                        res_balance=self.res_balance, attn_balance=self.attn_balance, clip_act=self.clip_act)
    arch = dict(img_resolution=self.img_resolution, cblock=cblock, num_blocks=self.num_blocks,
                attn_resolutions=tuple(self.attn_resolutions), block_kwargs=block_kwargs)
    x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1).astype(self.dtype)
    skips = _Encoder(**arch, name="enc")(x, emb, train)
    features = skips[-1]
    x = _Decoder(concat_balance=self.concat_balance, **arch, name="dec")(skips, emb, train)
    x = MPConv(self.img_channels, (3, 3), name="out_conv")(x, gain=out_gain)
    return x.astype(jnp.float32), features


class EDM2(_Architecture):
  """EDM2's Precond as a raw backbone: `unet` (F) and the uncertainty head (`logvar`). See the module docstring."""
  logvar_channels: int = 128

  def setup(self):
    unet_fields = {f: getattr(self, f) for f in _Architecture.__dataclass_fields__ if f not in ("parent", "name")}
    self.unet = UNet(**unet_fields)
    self.logvar_fourier = MPFourier(self.logvar_channels)
    self.logvar_linear = MPConv(1)

  def __call__(self, x, noise_labels, class_labels=None, train: bool = False, augment_labels=None,
               return_features: bool = False):
    r, c = self.img_resolution, self.img_channels
    if x.shape[1:] != (r, r, c):
      raise ValueError(f"EDM2 expects [N, {r}, {r}, {c}] inputs, got {x.shape}.")
    if augment_labels is not None:
      raise ValueError("EDM2 networks take no augmentation labels; pass augment_labels=None.")
    if self.is_initializing():
      self.logvar(noise_labels)  # create the uncertainty head's variables too
    out, features = self.unet(x, noise_labels, class_labels, train)
    return (out, features) if return_features else out

  def logvar(self, noise_labels):
    """EDM2's u(sigma) (Equation 21) from c_noise: [N] -> [N] (float32)."""
    noise_labels = jnp.reshape(jnp.asarray(noise_labels, jnp.float32), (-1,))
    return self.logvar_linear(self.logvar_fourier(noise_labels))[:, 0]


# ------------------------------------------------------------------------------------------------------------
# Building from configs.


def fields_from_config(cfg, spec) -> Dict[str, Any]:
  """EDM2 fields from a `network` config section (kind 'edm2') and a DataSpec. Keys absent from the section
  take EDM2's defaults (`DEFAULTS`), so the section needs only what it changes."""
  height, width, channels = spec.shape
  if height != width:
    raise ValueError(f"EDM2 needs square inputs; got per-sample shape {spec.shape}.")
  if cfg.get("preconditioning", "edm") != "edm":
    raise ValueError(f"network.kind='edm2' uses EDM2's preconditioning, which is EDM's: set "
                     f"network.preconditioning='edm' (got {cfg.preconditioning!r}).")
  fields = dict(img_resolution=height, img_channels=channels, label_dim=spec.num_classes,
                label_dropout=cfg.get("label_dropout", 0.0))
  for key, default in DEFAULTS.items():
    value = cfg.get(key, default)
    fields[key] = tuple(value) if isinstance(value, (list, tuple)) else value
  return fields


OFFICIAL_CLASS = "training.networks_edm2.Precond"  # the network class recorded in EDM2's published pickles


def config_from_official(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
  """EDM2 fields from the constructor arguments of an EDM2 `Precond` (as recorded in its published pickles).

  Unknown arguments are an error (they could change the network); use_fp16 does not change the parameters,
  sigma_data must be 0.5 (every published file; our Denoiser's network.sigma_data).
  """
  known = set(EDM2.__dataclass_fields__) - {"parent", "name", "dtype", "label_dropout"}
  unknown = sorted(k for k in kwargs if k not in known and k not in _IGNORED_OFFICIAL_KWARGS)
  if unknown:
    raise ValueError(f"Unsupported EDM2 Precond arguments {unknown}; supported: {sorted(known)}.")
  missing = sorted(k for k in ("img_resolution", "img_channels", "label_dim") if k not in kwargs)
  if missing:
    raise ValueError(f"EDM2 Precond arguments {missing} are required.")
  if kwargs.get("sigma_data", 0.5) != 0.5:
    raise ValueError(f"EDM2 network with sigma_data={kwargs['sigma_data']}; only 0.5 (all published files) is "
                     "supported.")
  return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kwargs.items() if k in known}


def architecture_from_official(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
  """dict(network=<network config section, kind 'edm2'>, shape=(R, R, C), num_classes=L) from an EDM2 Precond's
  constructor arguments; `fields_from_config(section, DataSpec(shape, num_classes))` gives the same network."""
  fields = config_from_official(kwargs)
  network = dict(kind="edm2", preconditioning="edm", sigma_data=0.5)
  network.update({k: fields.get(k, v) for k, v in DEFAULTS.items()})
  r, c = int(fields["img_resolution"]), int(fields["img_channels"])
  return dict(network=network, shape=(r, r, c), num_classes=int(fields["label_dim"]))


# Teacher presets in the converter's format (dict(network=<section>, shape, num_classes)), for state-dict files
# that record no constructor arguments. The published pickles (`edm2-img64-{size}-{kimg}-{ema std}.pkl`, e.g.
# edm2-img64-s-1073741-0.075.pkl, -m-2147483-0.060, -l-1073741-0.040, -xl-0671088-0.040, the FID-best EMA
# lengths; the guide edm2-img64-xs-0134217-0.110) record them: an EasyDict with 'ema' (the Precond, stored in
# float16: convert in float32), 'encoder' (StandardRGBEncoder: pixels / 127.5 - 1, our image range),
# 'dataset_kwargs' and 'loss_fn'.
TEACHER_PRESETS = {("tiny-edm2" if name == "tiny" else name): architecture_from_official(fields)
                   for name, fields in PRESETS.items()}


# ------------------------------------------------------------------------------------------------------------
# The state-dict mapping (one table).

MAPPING_TABLE = """
EDM2 Precond.state_dict() key                      our variable path                                  layout
unet.emb_fourier.{freqs,phases}        [C]         buffers/backbone/unet/emb_fourier/{freqs,phases}     same
unet.emb_noise.weight                  [O, I]      params/backbone/unet/emb_noise/weight       [I, O]   transposed
unet.emb_label.weight                  [O, L]      params/backbone/unet/emb_label/weight       [L, O]   transposed
unet.out_gain                          []          params/backbone/unet/out_gain               []       same
unet.enc.{R}x{R}_conv.weight           [O, I, 3, 3] params/backbone/unet/enc/{R}x{R}_conv/weight [3, 3, I, O] OIHW->HWIO
unet.{enc,dec}.{B}.emb_gain            []          params/backbone/unet/{enc,dec}/{B}/emb_gain []       same
unet.{enc,dec}.{B}.emb_linear.weight   [O, I]      params/backbone/unet/{enc,dec}/{B}/emb_linear/weight  transposed
unet.{enc,dec}.{B}.{conv_res0,conv_res1,conv_skip,attn_qkv,attn_proj}.weight [O, I, k, k]
                                                   params/backbone/unet/{enc,dec}/{B}/{same}/weight     OIHW->HWIO
unet.out_conv.weight                   [O, I, 3, 3] params/backbone/unet/out_conv/weight        [3, 3, I, O] OIHW->HWIO
logvar_fourier.{freqs,phases}          [C]         buffers/backbone/logvar_fourier/{freqs,phases}       same
logvar_linear.weight                   [1, C]      params/backbone/logvar_linear/weight         [C, 1]  transposed
B: {R}x{R}_down, {R}x{R}_block{i} (enc); {R}x{R}_in0, {R}x{R}_in1, {R}x{R}_up, {R}x{R}_block{i} (dec).
Rule: the key's dot-separated parts are the path below 'backbone'; freqs/phases live in 'buffers', all else in
'params'; 4-D weights transpose (2, 3, 1, 0), 2-D weights transpose (1, 0).
"""
PREFIX = ("backbone",)  # the Denoiser's submodule holding the backbone
_BUFFERS = ("freqs", "phases")


def flax_path(key: str, prefix: Sequence[str] = PREFIX) -> Tuple[str, ...]:
  """'unet.enc.64x64_conv.weight' -> ('params', 'backbone', 'unet', 'enc', '64x64_conv', 'weight')."""
  parts = tuple(key.split("."))
  return ("buffers" if parts[-1] in _BUFFERS else "params", *prefix, *parts)


def official_key(path: Sequence[str], prefix: Sequence[str] = PREFIX) -> str:
  """The inverse of `flax_path`."""
  path = tuple(path)
  n = len(prefix)
  if len(path) < n + 2 or path[0] not in ("params", "buffers") or path[1:1 + n] != tuple(prefix):
    raise ValueError(f"Not an EDM2 denoiser variable path: {'/'.join(path)}.")
  return ".".join(path[1 + n:])


def _to_flax(a: np.ndarray) -> np.ndarray:
  return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T if a.ndim == 2 else a


def _to_torch(a: np.ndarray) -> np.ndarray:
  return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a


def variable_shapes(config: Mapping[str, Any], prefix: Sequence[str] = PREFIX) -> Dict[Tuple[str, ...], tuple]:
  """Our variable path -> shape for an EDM2 network of `config` (EDM2 fields), without allocating it."""
  net = EDM2(**config)
  r, c = config["img_resolution"], config["img_channels"]
  label_dim = config.get("label_dim", 0)
  labels = jnp.zeros((1, label_dim), jnp.float32) if label_dim else None
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, r, r, c)), jnp.zeros((1,)), labels))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  out = {}
  for (collection, *rest), leaf in flat.items():
    out[(collection, *prefix, *rest)] = tuple(leaf.shape)
  return out


def official_shapes(config: Mapping[str, Any]) -> Dict[str, tuple]:
  """EDM2 Precond.state_dict() key -> shape (torch layout) for `config`."""
  torch_layout = {4: lambda s: (s[3], s[2], s[0], s[1]), 2: lambda s: (s[1], s[0])}
  return {official_key(p): torch_layout.get(len(s), tuple)(s) for p, s in variable_shapes(config).items()}


def from_torch_state_dict(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any],
                          prefix: Sequence[str] = PREFIX) -> Dict[str, Any]:
  """Denoiser variables ({'params': ..., 'buffers': ...}, backbone under `prefix`) from EDM2 Precond weights.

  state_dict: key -> numpy array as in `Precond.state_dict()` (keys may carry a leading 'net.' or
  'module.' only if the caller strips it). Every key and shape is checked first; missing, unexpected or
  mis-shaped keys raise one ValueError that names them all.
  """
  expected = official_shapes(config)
  got = {k: np.shape(v) for k, v in state_dict.items()}
  missing = sorted(set(expected) - set(got))
  extra = sorted(set(got) - set(expected))
  wrong = sorted(f"{k}: expected {expected[k]}, got {got[k]}" for k in set(expected) & set(got)
                 if tuple(got[k]) != tuple(expected[k]))
  if missing or extra or wrong:
    lines = []
    if missing:
      lines.append(f"missing keys {missing}")
    if extra:
      lines.append(f"unexpected keys {extra}")
    if wrong:
      lines.append(f"mis-shaped keys [{'; '.join(wrong)}]")
    raise ValueError(f"EDM2 state dict does not fit the network {dict(config)}: " + "; ".join(lines) +
                     ". Check the architecture (model_channels, channel_mult, num_blocks, attn_resolutions, "
                     "label_dim, img_channels, logvar_channels) against the file.")
  flat = {flax_path(k, prefix): np.asarray(_to_flax(np.asarray(v, np.float32)), np.float32)
          for k, v in state_dict.items()}
  return flax.traverse_util.unflatten_dict(flat)


def to_torch_state_dict(variables: Mapping[str, Any], prefix: Sequence[str] = PREFIX) -> Dict[str, np.ndarray]:
  """The inverse of `from_torch_state_dict`: EDM2 Precond.state_dict() keys -> float32 numpy arrays."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  return {official_key(p, prefix): np.asarray(_to_torch(np.asarray(v, np.float32)), order="C")  # keeps 0-d gains 0-d
          for p, v in flat.items()}


def random_state_dict(config: Mapping[str, Any], seed: int = 0) -> Dict[str, np.ndarray]:
  """Weights for tests and reference fixtures, from numpy alone: `np.random.default_rng(seed)`, keys in sorted
  order; weights N(0, 1) and gains N(0, 1) (not EDM2's zero init, which would hide the branches they scale);
  freqs 2 pi N(0, 1), phases 2 pi U(0, 1) as EDM2's buffers. Torch layout (the official code loads it)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in sorted(official_shapes(config).items()):
    if key.endswith(".phases"):
      out[key] = (2 * np.pi * rng.random(shape)).astype(np.float32)
    elif key.endswith(".freqs"):
      out[key] = (2 * np.pi * rng.standard_normal(shape)).astype(np.float32)
    else:
      out[key] = rng.standard_normal(shape).astype(np.float32)
  return out


# ------------------------------------------------------------------------------------------------------------
# Helpers on denoiser variables.

_WEIGHT = re.compile(r"(^|/)weight$")


def forced_weight_normalization(variables):
  """EDM2's forced weight normalisation (Equation 66) as a pure function: every MPConv weight replaced by its
  per-output-channel normalised value. Apply after each optimiser update to train as EDM2 does."""
  def fix(path, leaf):
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    if _WEIGHT.search(name) and name.startswith("params"):
      return normalize(leaf, _weight_axes(leaf.ndim))
    return leaf
  return jax.tree_util.tree_map_with_path(fix, variables)


def logvar_fn(denoiser):
  """`fn(variables, sigma) -> [N]` EDM2's log-variance u(sigma) of a Denoiser whose backbone is EDM2."""
  def fn(variables, sigma):
    sigma = jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,))
    c = precond.coefficients(denoiser.preconditioning, sigma, denoiser.sigma_data)
    return denoiser.apply(variables, c.c_noise, method=lambda m, c_noise: m.backbone.logvar(c_noise))
  return fn
