"""Seeded weights for equivalence fixtures: the same numbers from numpy alone, with or without torch/jax.

`fixture_state_dict(shapes, seed)`: for each key of the PyTorch state dict in sorted order (resample_filter
buffers excluded, they are fixed), draw from one numpy Generator(PCG64(seed)):
  weight of ndim >= 2   standard_normal(shape) / sqrt(fan_in)      fan_in = prod(shape[1:])
  weight of ndim 1      1 + 0.1 standard_normal(shape)              (GroupNorm gains)
  bias                  0.1 standard_normal(shape)
  freqs                 16 standard_normal(shape)                   (NCSN++'s Fourier buffer, as EDM draws it)
so every layer (including those EDM initialises to zero) changes the output. Used by
scripts/make_edm_fixtures.py (official code) and tests/test_edm_teachers.py (ours).
"""
from typing import Dict, Mapping, Sequence

import numpy as np


def fixture_state_dict(shapes: Mapping[str, Sequence[int]], seed: int) -> Dict[str, np.ndarray]:
  rng = np.random.Generator(np.random.PCG64(seed))
  out = {}
  for key in sorted(shapes):
    if key.endswith("resample_filter"):
      continue
    shape = tuple(shapes[key])
    name = key.rsplit(".", 1)[-1]
    z = rng.standard_normal(shape).astype(np.float32)
    if name == "weight" and len(shape) >= 2:
      out[key] = z / np.float32(np.sqrt(np.prod(shape[1:])))
    elif name == "weight":
      out[key] = 1 + np.float32(0.1) * z
    elif name == "bias":
      out[key] = np.float32(0.1) * z
    elif name == "freqs":
      out[key] = np.float32(16) * z
    else:
      raise ValueError(f"No fixture rule for the state-dict key {key!r}.")
  return out


def small_state_dict() -> Dict[str, np.ndarray]:
  """The contents of tests/fixtures/edm/torch_save_{zip,legacy}.pt (scripts/make_edm_fixtures.py)."""
  base = np.arange(12, dtype=np.float32).reshape(3, 4)
  return {"a.weight": base, "a.bias": base[1, 1:3], "b.weight": base.T, "c": np.arange(3, dtype=np.int64),
          "h": np.array([0.5, -2.0], np.float16)}


def fixture_inputs(shape, num_classes: int, seed: int = 1):
  """(x [6, C, H, W] float32 NCHW, sigma [6], labels [6, num_classes] one-hot or None): one image per sigma in
  0.002 .. 80."""
  rng = np.random.Generator(np.random.PCG64(seed))
  sigma = np.array([0.002, 0.02, 0.2, 2.0, 20.0, 80.0], np.float32)
  h, w, c = shape
  x = (rng.standard_normal((len(sigma), c, h, w)) * np.sqrt(0.25 + sigma[:, None, None, None] ** 2)).astype(
      np.float32)
  labels = None
  if num_classes:
    labels = np.eye(num_classes, dtype=np.float32)[np.arange(len(sigma)) % num_classes]
  return x, sigma, labels


def our_network(preset: str, precond: str, seed: int):
  """(denoiser, variables) of our network for a fixture case: the preset's architecture with the official
  wrapper's preconditioning (EDMPrecond/VPPrecond/VEPrecond) and the fixture's seeded weights."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gendistill import convert  # pylint: disable=g-import-not-at-top
  from gendistill.convert import mapping, presets  # pylint: disable=g-import-not-at-top
  arch = presets.get(preset)
  arch["network"]["preconditioning"] = convert.PRECONDITIONINGS[precond]
  cfg, spec = convert._network_config(arch["network"]), convert._spec(arch)  # pylint: disable=protected-access
  net, abstract = convert._abstract_variables(cfg, spec)  # pylint: disable=protected-access
  rf = tuple(arch["network"].get("resample_filter", (1, 1)))
  zeros = mapping.flax_to_torch(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract), resample_filter=rf)
  weights = fixture_state_dict({k: v.shape for k, v in zeros.items()}, seed)
  weights.update({k: v for k, v in zeros.items() if k.endswith("resample_filter")})  # fixed by the architecture
  variables = mapping.torch_to_flax(weights, abstract, resample_filter=rf)
  return net, jax.tree.map(jnp.asarray, variables)


def fixture_errors(path: str) -> Dict[str, float]:
  """Max abs error of our denoiser against a fixture of scripts/make_edm_fixtures.py: 'cond' and 'uncond' (with
  and without labels), and the same divided by max(1, sigma) ('*_per_sigma')."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  with np.load(path, allow_pickle=False) as z:
    f = {k: z[k] for k in z.files}
  from gendistill.convert import presets  # pylint: disable=g-import-not-at-top
  net, variables = our_network(str(f["preset"]), str(f["precond"]), int(f["seed"]))
  arch = presets.get(str(f["preset"]))
  x, sigma, labels = fixture_inputs(arch["shape"], arch["num_classes"])
  x = jnp.asarray(x.transpose(0, 2, 3, 1))
  labels = None if labels is None else jnp.asarray(labels)
  nchw = lambda y: np.asarray(y).transpose(0, 3, 1, 2)  # pylint: disable=unnecessary-lambda-assignment
  # VP and VE output D = x -/+ sigma F: float32 differences in F (~1e-6) grow with sigma, so they are also
  # reported on F's scale, |D_ours - D_official| / max(1, sigma) per sample.
  scale = np.maximum(1.0, np.asarray(sigma, np.float64))[:, None]
  out = {}
  for name, y in (("cond", labels), ("uncond", None)):
    err = np.abs(nchw(net.apply(variables, x, sigma, y)) - f[f"out_{name}"]).reshape(len(sigma), -1).max(1)
    out[name] = float(err.max())
    out[f"{name}_per_sigma"] = float((err[:, None] / scale).max())
  return out
