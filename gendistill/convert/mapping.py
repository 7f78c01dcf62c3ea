"""PyTorch state dict <-> Flax variables of the EDM networks: one renaming rule and one layout table.

A Flax leaf at path (collection, 'backbone', m1, ..., mk, leaf) is the PyTorch entry 'model.m1. ... .mk.<name>'
(the Denoiser's `backbone` is the preconditioning wrapper's `model`; submodule names are EDM's, see nets/unet.py
and nets/adm.py), with <name> and the layout from this table:

  Flax leaf  ndim  PyTorch name  PyTorch layout -> Flax layout      where
  ---------  ----  ------------  ---------------------------------  -------------------------------------------
  kernel     4     weight        [O, I, kh, kw] -> [kh, kw, I, O]   Conv2d (incl. 1x1 qkv/proj/skip)
  kernel     2     weight        [out, in] -> [in, out]             Linear (map_*, affine)
  scale      1     weight        same                               GroupNorm
  bias       1     bias          same                               Conv2d, Linear, GroupNorm
  freqs      1     freqs         same                               FourierEmbedding's buffer (NCSN++)

PyTorch buffers with no Flax leaf: `<conv>.resample_filter` of every Conv2d with up/down (the conv0 and skip of
each *_up/*_down block, and NCSN++'s *_aux_residual), fixed by the architecture's resample filter: they are
checked against it on reading and written on export.
"""
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

LEAF_TABLE = (
    # (flax leaf, ndim, torch name, axes: flax = transpose(torch, axes))
    ("kernel", 4, "weight", (2, 3, 1, 0)),
    ("kernel", 2, "weight", (1, 0)),
    ("scale", 1, "weight", None),
    ("bias", 1, "bias", None),
    ("freqs", 1, "freqs", None),
)
MODULE_RENAMES = {"backbone": "model"}


class ConversionError(ValueError):
  """Weights that do not fit the network: missing, extra or mis-shaped keys, or another architecture."""


def _flat(tree, prefix=()):
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from _flat(v, prefix + (str(k),))
  else:
    yield prefix, tree


def _set(tree: dict, path: Sequence[str], value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def torch_key(path: Tuple[str, ...], ndim: int, table=LEAF_TABLE) -> Tuple[str, Optional[tuple]]:
  """(PyTorch key, axes) of the Flax leaf at `path` (collection first) with `ndim` dimensions."""
  *modules, leaf = path[1:]
  for flax_leaf, rank, torch_name, axes in table:
    if flax_leaf == leaf and rank == ndim:
      return ".".join([MODULE_RENAMES.get(m, m) for m in modules] + [torch_name]), axes
  raise ConversionError(f"No PyTorch counterpart for the Flax leaf {'/'.join(path)} ({ndim}-D).")


def resample_filter_buffers(keys: Iterable[str], resample_filter: Sequence[float]) -> Dict[str, np.ndarray]:
  """The resample_filter buffers PyTorch holds for a network whose Flax torch-keys are `keys` (see above)."""
  f = np.asarray(resample_filter, np.float32)
  value = (np.outer(f, f) / f.sum() ** 2)[None, None]
  modules = set()
  for key in keys:
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
      if p.endswith("_up") or p.endswith("_down"):
        prefix = ".".join(parts[: i + 1])
        modules.update({prefix + ".conv0", prefix + ".skip"})
      if p.endswith("_aux_residual"):
        modules.add(".".join(parts[: i + 1]))
  return {m + ".resample_filter": value for m in sorted(modules)}


def _limited(names, n=8):
  names = sorted(names)
  return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def torch_to_flax(state_dict: Mapping[str, np.ndarray], abstract_variables, *, resample_filter=(1, 1),
                  source: str = "the weights", table=LEAF_TABLE) -> Dict[str, Any]:
  """Flax variables shaped like `abstract_variables` (e.g. from jax.eval_shape of init) from a PyTorch state dict.

  Every Flax leaf must have its key with the right shape; every key must be used (or be a resample_filter
  buffer equal to the architecture's). Otherwise ConversionError names the keys.
  """
  out, used, missing, bad_shape = {}, set(), [], []
  for path, leaf in _flat(abstract_variables):
    shape = tuple(leaf.shape)
    key, axes = torch_key(path, len(shape), table)
    if key not in state_dict:
      missing.append(key)
      continue
    value = np.asarray(state_dict[key])
    flax_value = value.transpose(axes) if axes is not None and value.ndim == len(axes) else value
    if tuple(flax_value.shape) != shape:
      expect = tuple(shape[i] for i in np.argsort(axes)) if axes is not None else shape
      bad_shape.append(f"{key}: {tuple(value.shape)}, expected {expect}")
      continue
    used.add(key)
    _set(out, path, np.asarray(flax_value, np.float32, order="C"))
  buffers = resample_filter_buffers(used | set(missing), resample_filter)
  extra, bad_buffer = [], []
  for key, value in state_dict.items():
    if key in used:
      continue
    if key in buffers:
      if np.shape(value) != buffers[key].shape or not np.allclose(value, buffers[key], atol=1e-6):
        bad_buffer.append(f"{key} (shape {np.shape(value)}; expected the filter {list(resample_filter)}, "
                          f"shape {buffers[key].shape})")
      continue
    extra.append(key)
  problems = []
  if missing:
    problems.append(f"missing keys: {_limited(missing)}")
  if extra:
    problems.append(f"unexpected keys: {_limited(extra)}")
  if bad_shape:
    problems.append(f"wrong shapes: {'; '.join(bad_shape[:8])}" + (" ..." if len(bad_shape) > 8 else ""))
  if bad_buffer:
    problems.append(f"wrong resample filters: {'; '.join(bad_buffer[:4])}")
  if problems:
    raise ConversionError(
        f"{source} do not fit the network ({len(missing)} missing, {len(extra)} unexpected, {len(bad_shape)} "
        f"mis-shaped keys): " + " | ".join(problems) + ". Check the architecture (network section or --preset) "
        "against the file.")
  return out


def flax_to_torch(variables, *, resample_filter=(1, 1), table=LEAF_TABLE) -> Dict[str, np.ndarray]:
  """The PyTorch state dict (EDM names and layouts, resample_filter buffers included) of Flax `variables`."""
  out = {}
  for path, leaf in _flat(variables):
    value = np.asarray(leaf, np.float32)
    key, axes = torch_key(path, value.ndim, table)
    out[key] = np.asarray(value.transpose(np.argsort(axes)) if axes is not None else value, order="C")
  out.update(resample_filter_buffers(list(out), resample_filter))
  return out
