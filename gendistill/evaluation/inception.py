"""The FID Inception-v3 (TF graph 2015-12-05) in Flax, its input pipelines, and torch-free weight loading.

The network is pytorch-fid's `fid_inception_v3()`: torchvision's Inception3 with the FIDInceptionA/C/E_1/E_2
blocks (TF's average pool ignores padded zeros; Mixed_7c pools with max, not average), 1008 output classes and
no auxiliary head. It returns the 2048-d pool3 features (FID, KID, precision/recall) and the 1008 logits
(Inception Score).

Parameters are the torch state dict nested by "." (`params["Mixed_5b"]["branch1x1"]["conv"]["weight"]`, OIHW),
so a state dict maps onto the Flax tree with no renaming and no transposes: one fact, stated once.

Input pipelines (`preprocess`), both from uint8 images:
  "pytorch_fid": x / 255 -> bilinear resize to 299x299 as torch's F.interpolate(align_corners=False, no
                 antialiasing) -> 2x - 1. pytorch-fid, clean-fid's "legacy_pytorch" mode, torch-fidelity-like.
  "nvidia":      float(x) -> bilinear resize as TF1's resize_bilinear (source = dst * in / 299, edge-clamped;
                 NVIDIA's TorchScript detector does it with affine_grid + grid_sample(border)) -> (x - 128) / 128.
                 This is the pipeline of the detector EDM/StyleGAN used for their reference statistics.
Both run the same network and weights; they differ in the resize sampling grid and in 1/127.5 vs 1/128.
Generated images in [-1, 1] are quantised first exactly as EDM: uint8(clip(x * 127.5 + 128, 0, 255)).

Weight files (`load_params`), all read without torch and never downloaded:
  * pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a torch.save state dict; both the zip format of
    torch >= 1.6 and the older "legacy" pickle format are read by a restricted unpickler that only rebuilds
    tensors: it cannot run code from the file);
  * our converted `.npz` (the same state dict as flat "."-joined names -> arrays; `save_params_npz`);
  * NVIDIA's `inception-2015-12-05.pkl` / `.pt` (a TorchScript module) is NOT supported: its parameters carry
    the TF graph's names (layers.mixed_3.tower_1.conv...) whose mapping onto these branches could not be
    checked here without the file, and a wrong concatenation order would silently change every feature.
    Convert it to pytorch-fid's state dict with torch if you must, or use pytorch-fid's file (same TF weights).
Convert once with: `python -m gendistill.evaluation.inception --convert IN.pth OUT.npz`.
Without an explicit path, `default_weights_path()` reads $GENDISTILL_INCEPTION_WEIGHTS.
"""
from __future__ import annotations

import argparse
import functools
import collections
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gendistill import paths

NUM_CLASSES = 1008
FEATURE_DIM = 2048
RESOLUTION = 299
BN_EPS = 1e-3
WEIGHTS_ENV = "GENDISTILL_INCEPTION_WEIGHTS"
PREPROCESSING = ("pytorch_fid", "nvidia")
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------------------
# Network (module and parameter names are pytorch-fid's / torchvision's).


class Conv2d(nn.Module):
  """Bias-free convolution with a torch-layout (OIHW) kernel named `weight`; NHWC activations."""
  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.initializers.lecun_normal(in_axis=(1, 2, 3), out_axis=0),
                   (self.features, x.shape[-1], *self.kernel_size))
    ph, pw = self.padding
    return jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (self.stride, self.stride), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "OIHW", "NHWC"), precision=_HI)


class BatchNorm(nn.Module):
  """Inference batch norm with torch's parameter names; the running statistics are plain (frozen) params."""
  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight = self.param("weight", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("running_mean", nn.initializers.zeros, (c,))
    var = self.param("running_var", nn.initializers.ones, (c,))
    return (x - mean) / jnp.sqrt(var + self.eps) * weight + bias  # torch's order of operations


class BasicConv2d(nn.Module):
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = Conv2d(self.features, self.kernel_size, self.stride, self.padding, name="conv")(x)
    return nn.relu(BatchNorm(name="bn")(x))


def _max_pool(x, window: int, stride: int, pad: int = 0):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                               ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool_3x3_exclude_pad(x):
  """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False): TF's average pool."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  h, w = x.shape[1:3]
  ones = np.pad(np.ones((h, w), np.float32), 1)
  count = sum(ones[i:i + h, j:j + w] for i in range(3) for j in range(3))  # static, computed at trace time
  return total / count[None, :, :, None].astype(np.float32)


class InceptionA(nn.Module):  # FIDInceptionA
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, name="branch1x1")(x)
    b5 = BasicConv2d(48, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # torchvision InceptionB (Mixed_6a)
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):  # FIDInceptionC
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, name="branch1x1")(x)
    b7 = BasicConv2d(c7, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # torchvision InceptionD (Mixed_7a)
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):  # FIDInceptionE_1 (pool="avg", Mixed_7b) and FIDInceptionE_2 (pool="max", Mixed_7c)
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, name="branch1x1")(x)
    b3 = BasicConv2d(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _avg_pool_3x3_exclude_pad(x) if self.pool == "avg" else _max_pool(x, 3, 1, pad=1)
    bp = BasicConv2d(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """x: [N, H, W, 3] float32 already preprocessed (299x299, [-1, 1]) -> (pool [N, 2048], logits [N, 1008]).

  `logits` include the fc bias; the Inception Score of the original TF code (and of torch-fidelity and
  NVIDIA) uses the logits without it: `logits - params["fc"]["bias"]`, see `InceptionFeatures`.
  """
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    x = BasicConv2d(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 3, 2)
    x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 3, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1): pool3
    logits = _Linear(self.num_classes, name="fc")(pool)
    return pool, logits


class _Linear(nn.Module):
  """torch.nn.Linear with torch's layout: weight [out, in], bias [out]."""
  features: int

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.initializers.lecun_normal(in_axis=1, out_axis=0), (self.features, x.shape[-1]))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return jnp.dot(x, w.T, precision=_HI) + b


# ----------------------------------------------------------------------------------------------------------------
# Input pipelines.


def quantize(images) -> np.ndarray | jax.Array:
  """Generated images in [-1, 1] -> uint8 exactly as EDM: uint8(clip(x * 127.5 + 128, 0, 255)) (truncation)."""
  xp = jnp if isinstance(images, jax.Array) else np
  return xp.clip(xp.asarray(images, xp.float32) * 127.5 + 128, 0, 255).astype(xp.uint8)


def _linear_taps(in_size: int, out_size: int, mode: str):
  """Source indices (i0, i1) and weights (w0, w1) of 1-D bilinear resampling, as the reference computes them."""
  dst = np.arange(out_size)
  if mode == "pytorch_fid":
    # torch upsample_bilinear2d, align_corners=False, size given: scale = in / out in float32 (opmath),
    # src = scale * (dst + 0.5) - 0.5 clamped at 0; i1 = i0 + 1 unless at the last pixel.
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (dst.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
  elif mode == "nvidia":
    # affine_grid(theta + [1/in - 1/299]) + grid_sample(bilinear, border, align_corners=False) reduces to
    # TF1 resize_bilinear: src = dst * in / out, clamped to [0, in - 1].
    src = np.minimum(dst * (in_size / out_size), in_size - 1).astype(np.float64)
  else:
    raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {mode!r}")
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0).astype(np.float32)
  return i0, i1, (np.float32(1) - w1), w1


def _resize_axis(x, axis: int, out_size: int, mode: str):
  i0, i1, w0, w1 = _linear_taps(x.shape[axis], out_size, mode)
  shape = [1] * x.ndim
  shape[axis] = out_size
  return (jnp.take(x, i0, axis=axis) * w0.reshape(shape) + jnp.take(x, i1, axis=axis) * w1.reshape(shape))


def preprocess(images, preprocessing: str = "pytorch_fid", size: int = RESOLUTION):
  """uint8 [N, H, W, C] (C = 1 or 3) -> float32 [N, size, size, 3] network input in [-1, 1]. Traceable.

  Separable bilinear resampling with the reference's sampling grid and weights (no antialiasing when
  shrinking, unlike jax.image.resize); an image already at `size` passes through unchanged.
  """
  if images.dtype != jnp.uint8:
    raise TypeError(f"preprocess expects uint8 images, got {images.dtype}; quantize() generated images first")
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)  # grayscale as RGB, like PIL's convert("RGB")
  if images.shape[-1] != 3:
    raise ValueError(f"images must be NHWC with 1 or 3 channels, got shape {images.shape}")
  x = images.astype(jnp.float32)
  if preprocessing == "pytorch_fid":
    x = x / 255.0  # torchvision ToTensor
  elif preprocessing != "nvidia":
    raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")
  if x.shape[1] != size:
    x = _resize_axis(x, 1, size, preprocessing)
  if x.shape[2] != size:
    x = _resize_axis(x, 2, size, preprocessing)
  return 2.0 * x - 1.0 if preprocessing == "pytorch_fid" else (x - 128.0) / 128.0


# ----------------------------------------------------------------------------------------------------------------
# Parameters: shapes, conversion from/to state dicts, seeded random weights, files.


def _abstract_params():
  x = jax.ShapeDtypeStruct((1, RESOLUTION, RESOLUTION, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), x)["params"]


def param_shapes() -> dict[str, tuple[int, ...]]:
  """State-dict name -> shape of every parameter (torch names, torch layouts), in a fixed order."""
  flat = jax.tree_util.tree_flatten_with_path(_abstract_params())[0]
  return {".".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def params_from_state_dict(state_dict: dict[str, Any], dtype=np.float32) -> dict:
  """A pytorch-fid state dict (name -> array) -> the Flax params tree. Checks names and shapes strictly."""
  expected = param_shapes()
  sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  if missing or unexpected:
    raise ValueError(f"not a pytorch-fid FID Inception state dict: missing {missing[:8]}"
                     f"{'...' if len(missing) > 8 else ''} ({len(missing)}), unexpected {unexpected[:8]}"
                     f"{'...' if len(unexpected) > 8 else ''} ({len(unexpected)})")
  params: dict = {}
  for name, shape in expected.items():
    value = np.asarray(sd[name])
    if value.shape != shape:
      raise ValueError(f"{name}: shape {value.shape}, expected {shape}")
    node = params
    *parents, leaf = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value.astype(dtype)
  return params


def state_dict_from_params(params) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {".".join(k.key for k in path): np.asarray(leaf) for path, leaf in flat}


def random_state_dict(seed: int) -> dict[str, np.ndarray]:
  """Seeded random weights (numpy only), with torch names and layouts; activations stay O(1) through the net.

  Each tensor is drawn from its own legacy `np.random.RandomState([seed, crc32(name)])` (a stream numpy
  keeps stable across versions), so the result does not depend on iteration order. Convolutions are He-scaled
  (std sqrt(2 / fan_in)); batch norms are near identity (weight, running_var ~ U(0.8, 1.2), bias, running_mean
  ~ 0.1 N(0, 1)); fc has std 1 / sqrt(2048). Used by the parity fixture (scripts/make_inception_fixture.py).
  """
  out = {}
  for name, shape in param_shapes().items():
    rs = np.random.RandomState([seed & 0xFFFFFFFF, zlib.crc32(name.encode())])
    kind = name.rsplit(".", 1)[-1]
    if name.endswith("conv.weight"):
      value = rs.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif name == "fc.weight":
      value = rs.standard_normal(shape) / np.sqrt(shape[1])
    elif kind in ("weight", "running_var"):
      value = rs.uniform(0.8, 1.2, shape)
    elif kind in ("bias", "running_mean"):
      value = 0.1 * rs.standard_normal(shape)
    else:
      raise AssertionError(name)
    out[name] = value.astype(np.float32)
  return out


def save_params_npz(params_or_state_dict, path: str) -> None:
  """Our converted format: an .npz of the flat state dict (name -> float32 array in torch layout)."""
  sd = params_or_state_dict
  if any(isinstance(v, dict) for v in sd.values()):  # a nested params tree
    sd = state_dict_from_params(sd)
  paths.save_npz(path, **{k: np.asarray(v, np.float32) for k, v in sd.items()})


def default_weights_path() -> str | None:
  return os.environ.get(WEIGHTS_ENV) or None


def load_params(path: str | None = None) -> dict:
  """Read Inception weights from a local file (pytorch-fid .pth in zip or legacy format, or our .npz)."""
  path = path or default_weights_path()
  if not path:
    raise FileNotFoundError(
        "No Inception weights given. Pass a local path to pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
        f"(or a converted .npz), or set ${WEIGHTS_ENV}. gendistill never downloads weights.")
  if not paths.exists(path):
    raise FileNotFoundError(f"Inception weights not found: {path}")
  return params_from_state_dict(read_state_dict(path))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Flat name -> numpy array from a torch.save'd state dict (zip or legacy) or an .npz, without torch."""
  source = io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path   # gs://...: read once
  if zipfile.is_zipfile(source):
    with zipfile.ZipFile(source) as zf:
      names = zf.namelist()
      if names and all(n.endswith(".npy") for n in names):
        if not isinstance(source, str):
          source.seek(0)
        with np.load(source) as npz:
          return {k: npz[k] for k in npz.files}
      if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise NotImplementedError(
            f"{path} is a TorchScript archive (NVIDIA's inception-2015-12-05.pt/.pkl detector?). Its weights use "
            "the TF graph's names, which gendistill does not map; use pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth (the same TF 2015-12-05 weights) instead.")
      obj = _load_torch_zip(zf)
  else:
    with paths.open_file(path, "rb") as f:
      obj = _load_torch_legacy(f, path)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
  return {k: _materialize(v) for k, v in obj.items() if isinstance(v, (_LazyTensor, np.ndarray))}


# ------------------------------------------------------------- torch-free reader for torch.save files.

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "int64": np.int64, "long": np.int64, "int32": np.int32,
    "int": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
  def __init__(self, name):
    if name == "BFloat16Storage":
      import ml_dtypes  # shipped with jax
      self.dtype = np.dtype(ml_dtypes.bfloat16)
    else:
      self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A storage referenced from the pickle; its bytes arrive later (legacy) or on demand (zip)."""

  def __init__(self, dtype, data: np.ndarray | None = None):
    self.dtype = dtype
    self.data = data


class _LazyTensor:
  def __init__(self, storage: _Storage, offset, size, stride, dtype=None):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
    self.dtype = np.dtype(dtype) if dtype is not None else None


def _materialize(value):
  if isinstance(value, _LazyTensor):
    data = value.storage.data
    if value.dtype is not None and value.dtype != data.dtype:  # _rebuild_tensor_v3 over an untyped storage
      data = data.view(value.dtype.newbyteorder(data.dtype.byteorder))
    if int(np.prod(value.size)) == 0:
      return np.zeros(value.size, data.dtype.newbyteorder("="))
    view = np.lib.stride_tricks.as_strided(
        data[value.offset:], shape=value.size, strides=[s * data.itemsize for s in value.stride])
    return np.array(view, dtype=data.dtype.newbyteorder("="))
  return value


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *unused):
  return _LazyTensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, *unused):
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Rebuilds only containers and tensors; any other global in the file is refused (no code runs)."""
  _GLOBALS = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
  }

  def __init__(self, file, storage_fn: Callable[[tuple], _Storage] | None = None):
    super().__init__(file)
    self._storage_fn = storage_fn

  def find_class(self, module, name):
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    if module in ("torch", "torch.storage") and name.endswith("Storage") and (
        name in _STORAGE_DTYPES or name == "BFloat16Storage"):
      return _StorageType(name)
    if module == "torch" and name in _TORCH_DTYPES:
      return np.dtype(_TORCH_DTYPES[name])
    raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name}: only plain state dicts of tensors are supported "
        "(a pickled module or TorchScript detector, such as NVIDIA's inception-2015-12-05.pkl, is not)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage") or self._storage_fn is None:
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    return self._storage_fn(pid)


def _load_torch_zip(zf: zipfile.ZipFile):
  pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
  if len(pkl) != 1:
    raise ValueError(f"not a torch.save zip archive (data.pkl records: {pkl})")
  prefix = pkl[0][:-len("data.pkl")]
  byteorder = "little"
  if prefix + "byteorder" in zf.namelist():
    byteorder = zf.read(prefix + "byteorder").decode()
  cache: dict[str, _Storage] = {}

  def storage_fn(pid):
    _, storage_type, key, _location, _numel = pid[:5]
    if key not in cache:
      dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
      cache[key] = _Storage(dtype, np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype))
    return cache[key]

  return _TorchUnpickler(io.BytesIO(zf.read(pkl[0])), storage_fn).load()


def _load_torch_legacy(f, path=""):
  """torch.save(..., _use_new_zipfile_serialization=False): magic, version, sys_info, object, keys, storages."""
  try:
    magic = _TorchUnpickler(f).load()
  except Exception as e:  # noqa: BLE001 - say what the file is not
    raise ValueError(f"{path}: not a torch.save file, zip archive or .npz ({e})") from None
  if magic != _LEGACY_MAGIC:
    raise ValueError(f"{path}: not a torch.save file (a plain pickle?); tar-format checkpoints are not supported")
  version = _TorchUnpickler(f).load()
  if version != 1001:
    raise ValueError(f"{path}: unsupported legacy torch.save protocol {version}")
  sys_info = _TorchUnpickler(f).load()
  order = "<" if sys_info.get("little_endian", True) else ">"
  roots: dict[str, _Storage] = {}
  views: list[tuple[_Storage, str, int, int]] = []

  def storage_fn(pid):
    _, storage_type, key, _location, _numel, view_metadata = pid
    dtype = storage_type.dtype.newbyteorder(order)
    root = roots.setdefault(key, _Storage(dtype))
    if view_metadata is None:
      return root
    _view_key, offset, view_size = view_metadata
    view = _Storage(dtype)
    views.append((view, key, offset, view_size))
    return view

  obj = _TorchUnpickler(f, storage_fn).load()
  keys = _TorchUnpickler(f).load()
  for key in keys:
    (numel,) = struct.unpack("<q", f.read(8))
    dtype = roots[key].dtype
    roots[key].data = np.frombuffer(f.read(numel * dtype.itemsize), dtype)
  for view, key, offset, size in views:
    view.data = roots[key].data[offset:offset + size]
  return obj


# ----------------------------------------------------------------------------------------------------------------
# Batched feature extraction.


@functools.partial(jax.jit, static_argnums=0)
def _features(preprocessing, params, images):
  """Pool features and logits of one batch; module-level so every extractor shares the compiled program."""
  if images.dtype != jnp.uint8:
    images = quantize(images)
  pool, _ = FIDInceptionV3().apply({"params": params}, preprocess(images, preprocessing))
  logits = jnp.dot(pool, params["fc"]["weight"].T, precision=_HI)  # no fc bias, as the original IS code
  return {"pool": pool, "logits": logits}


class InceptionFeatures:
  """Jitted, batched Inception features for uint8 images (or generated images in [-1, 1], quantised first).

    extractor = InceptionFeatures(load_params(path))           # or InceptionFeatures.from_file(path)
    out = extractor.features(images, batch_size=100, progress=True)
    out["pool"]: [N, 2048] float32 (FID, KID, precision/recall); out["logits"]: [N, 1008] with the fc bias
    removed, as the original Inception Score code; extractor(images_batch) does one device batch.

  `sharding`: optional `jax.sharding.Sharding` for the batch axis (e.g. NamedSharding(mesh, P(("data",
  "fsdp")))); params are replicated. Every call runs the same compiled program: the last partial batch is
  padded to `batch_size` and the padding dropped.
  """

  def __init__(self, params, preprocessing: str = "pytorch_fid", sharding=None):
    if preprocessing not in PREPROCESSING:
      raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")
    self.preprocessing = preprocessing
    self.sharding = sharding
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    if sharding is not None:
      replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
      params = jax.device_put(params, replicated)
    self.params = params

  @classmethod
  def from_file(cls, path: str | None = None, **kwargs):
    return cls(load_params(path), **kwargs)

  def __call__(self, images) -> dict[str, jax.Array]:
    images = jnp.asarray(images) if self.sharding is None else jax.device_put(images, self.sharding)
    return _features(self.preprocessing, self.params, images)

  def features(self, images: np.ndarray | Iterable[np.ndarray], batch_size: int = 100,
               progress: bool = False, total: int | None = None) -> dict[str, np.ndarray]:
    """images: an array [N, H, W, C] or an iterable of such batches -> {"pool", "logits"} numpy arrays."""
    if isinstance(images, (np.ndarray, jax.Array)):
      total = images.shape[0]
      batches = (images[i:i + batch_size] for i in range(0, total, batch_size))
    else:
      batches = iter(images)
    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=total, unit="img", desc="inception")
    outs: dict[str, list] = {"pool": [], "logits": []}
    for batch in batches:
      n = batch.shape[0]
      for start in range(0, n, batch_size):
        chunk = np.asarray(batch[start:start + batch_size])
        m = chunk.shape[0]
        if m < batch_size:
          chunk = np.concatenate([chunk, np.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype)])
        out = self(chunk)
        for k in outs:
          outs[k].append(np.asarray(out[k])[:m])
        if bar is not None:
          bar.update(m)
    if bar is not None:
      bar.close()
    return {k: (np.concatenate(v) if v else np.zeros((0, FEATURE_DIM if k == "pool" else NUM_CLASSES),
                                                      np.float32)) for k, v in outs.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--convert", nargs=2, metavar=("IN", "OUT_NPZ"),
                      help="convert pytorch-fid's .pth (no torch needed) to gendistill's .npz")
  args = parser.parse_args(argv)
  if args.convert:
    src, dst = args.convert
    save_params_npz(params_from_state_dict(read_state_dict(src)), dst)
    print(f"wrote {dst}")
  else:
    parser.print_help()
  return 0


if __name__ == "__main__":
  sys.exit(main())
