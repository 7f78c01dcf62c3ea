"""Datasets: embedded toy2d and digits, real ones through tfds.data_source or image files, all read through grain.

    ds = data.build(config.data, jax.process_index(), jax.process_count())
    it = ds.iterator()            # resumable: it.get_state() -> dict, it.set_state(dict)
    batch = next(it)              # this process's share of the global batch, dict of numpy arrays

Batches are ``{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}`` (label only when
``conditional``) or ``{'x': float32 [b, 2]}`` for toy2d, with b = batch_size / process_count; the P
processes' shares, concatenated in process order, form the global batch one process would read. The
iterator state is the same on every process (see `pipeline`), so the checkpoint stores one.

Config keys (ml_collections ConfigDict; missing keys take the defaults in `DEFAULTS`):
  name           'toy2d' | 'digits' | 'tfds' | 'images'
  toy2d_kind     a named kind (`toy2d.KINDS`), 'family:SEED' (the seeded family), 'mixture' (the user's
                 Gaussian mixture: data.toy2d_mixture or an .npz at data.path) or 'points' (an .npy/.npz of
                 [n, 2] points at data.path); see gendistill/data/toy2d.py
  toy2d_mixture  kind 'mixture': JSON {"weights": [K], "means": [K][2], "covs": [K][2][2]} ('' = use data.path)
  toy2d_size     size of the fixed toy training pool (kind 'points': all the file's points instead)
  image_size     digits: side of the resized images (0 -> 16); tfds: resize to a square (0 -> native)
  tfds_name, tfds_split, tfds_data_dir ('' = tfds default); the dataset must be prepared (see tfds_source)
  path           toy2d 'mixture' / 'points': the .npz / .npy file; images: a directory or .zip in EDM's dataset
                 layout, or an .npz (see image_folder)
  xflip          image data: add a left-right mirrored copy of every image (EDM's --xflip; 2N examples)
  batch_size     GLOBAL batch size
  seed           shuffle seed
  conditional    keep 'label' (and spec.num_classes > 0); toy2d has no labels
"""
import dataclasses
from collections.abc import Callable
from typing import Any

import grain
import ml_collections
import numpy as np

from gendistill.data import digits as digits_lib
from gendistill.data import image_folder
from gendistill.data import pipeline
from gendistill.data import tfds_source
from gendistill.data import toy2d
from gendistill.data.spec import DataSpec
from gendistill.data.toy2d import GaussianMixture

NAMES = ("toy2d", "digits", "tfds", "images")
DEFAULTS = dict(
    name="toy2d",
    toy2d_kind="ring8",
    toy2d_mixture="",
    toy2d_size=2**16,
    image_size=0,
    tfds_name="",
    tfds_split="train",
    tfds_data_dir="",
    path="",
    xflip=False,
    batch_size=256,
    seed=0,
    conditional=False,
)

__all__ = ["DataSpec", "Dataset", "GaussianMixture", "build", "check_toy2d", "data_config", "NAMES", "DEFAULTS"]


def data_config():
  """The `data` config section with the defaults above (the one place they are written)."""
  return ml_collections.ConfigDict(dict(DEFAULTS))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A built dataset for one process.

  Attributes:
    name: the config's data name ('toy2d' | 'digits' | 'tfds' | 'images').
    spec: per-sample key, shape and number of classes.
    mixture: the exact GaussianMixture of a toy2d mixture kind, else None.
    global_batch_size, batch_size: the global batch and this process's share of it.
    process_index, process_count: which share this process reads.
    num_examples: size of the training set (before repetition).
    batches: the infinite grain MapDataset of this process's batches; `batches[t]` is batch t.
  """
  name: str
  spec: DataSpec
  mixture: GaussianMixture | None
  global_batch_size: int
  batch_size: int
  process_index: int
  process_count: int
  num_examples: int
  batches: grain.MapDataset
  num_threads: int
  _reference: Callable[[int | None], dict[str, np.ndarray]]

  def iterator(self) -> grain.DatasetIterator:
    """A fresh iterator from batch 0: `next(it)`, `it.get_state() -> dict`, `it.set_state(dict)`."""
    return pipeline.make_iterator(self.batches, num_threads=self.num_threads)

  def reference(self, n: int | None = None) -> dict[str, np.ndarray]:
    """Real samples for evaluation, deterministic, not shuffled, same format as a batch (with 'label'
    whenever the data has labels, even if unconditional).

    toy2d: n (default: toy2d_size) fresh samples from the true distribution (a seed other than the
    pool's); toy2d 'points': the first n (default all) points of the file; digits: the first n (default all 1797) images; tfds: the first n (default all) records of
    the split.
    """
    return self._reference(n)


def _get(config, key):
  return config.get(key, DEFAULTS[key]) if hasattr(config, "get") else getattr(config, key)


def check_toy2d(data_config: Any):
  """Reads and checks the toy2d data a config names (a user's mixture or points file included) without
  sampling it; raises ValueError naming the key, the file and the fix."""
  kind, mixture_json, path = (_get(data_config, k) for k in ("toy2d_kind", "toy2d_mixture", "path"))
  if kind not in toy2d.USER_KINDS and (mixture_json or path):
    raise ValueError(f"data.toy2d_mixture and data.path are read only by toy2d_kind 'mixture' or 'points'; "
                     f"toy2d_kind is {kind!r}: clear them or set the kind.")
  if kind == "points" and mixture_json:
    raise ValueError("data.toy2d_kind='points' reads data.path; data.toy2d_mixture must be '' (or use kind "
                     "'mixture').")
  if kind == "points":
    return toy2d.load_points(path)
  if kind == "mixture":
    return toy2d.user_mixture(mixture_json, path)
  return toy2d.mixture(kind)  # Raises on an unknown kind.


def _toy2d_source(kind: str, size: int, mixture_json: str, path: str):
  """(mixture or None, training pool [n, 2], reference(n)) of a toy2d kind; raises ValueError naming the cause."""
  checked = check_toy2d(dict(toy2d_kind=kind, toy2d_mixture=mixture_json, path=path))
  if kind == "points":
    points = checked   # the pool is every point; the reference their first n (like digits)
    return None, points, lambda n=None: {"x": points[:n]}
  if kind == "mixture":
    mix = checked
    pool = mix.sample(size, toy2d.POOL_SEED)
    pool.setflags(write=False)
    return mix, pool, lambda n=None: {"x": mix.sample(size if n is None else n, toy2d.REFERENCE_SEED)}
  mix = checked
  return mix, toy2d.pool(kind, size), lambda n=None: {"x": toy2d.sample(kind, size if n is None else n,
                                                                         toy2d.REFERENCE_SEED)}


def build(data_config: Any, process_index: int = 0, process_count: int = 1, *,
          num_threads: int | None = None) -> Dataset:
  """Builds the dataset `data_config.name` for process `process_index` of `process_count`.

  num_threads: grain reader threads (default 0 for in-memory data, 4 for tfds).
  """
  name = _get(data_config, "name")
  global_batch = int(_get(data_config, "batch_size"))
  batch = pipeline.per_process_batch_size(global_batch, process_count)
  seed = int(_get(data_config, "seed"))
  conditional = bool(_get(data_config, "conditional"))
  image_size = int(_get(data_config, "image_size") or 0)
  xflip = bool(_get(data_config, "xflip"))
  shard = dict(global_batch_size=global_batch, seed=seed, process_index=process_index,
               process_count=process_count)
  common = dict(name=name, global_batch_size=global_batch, batch_size=batch, process_index=process_index,
                process_count=process_count)

  if name == "toy2d":
    kind = _get(data_config, "toy2d_kind")
    if conditional:
      raise ValueError("toy2d has no labels: set data.conditional=False.")
    if xflip:
      raise ValueError("data.xflip mirrors images; toy2d has none: set data.xflip=False.")
    size = int(_get(data_config, "toy2d_size"))
    if size <= 0:
      raise ValueError(f"toy2d_size must be positive, got {size}.")
    mix, pool, reference = _toy2d_source(kind, size, _get(data_config, "toy2d_mixture"), _get(data_config, "path"))
    return Dataset(spec=DataSpec("x", (toy2d.DIM,), 0), mixture=mix, num_examples=pool.shape[0],
                   batches=pipeline.array_batches({"x": pool}, **shard),
                   num_threads=num_threads or 0, _reference=reference, **common)

  if name == "digits":
    images, labels = digits_lib.load_digits(image_size or digits_lib.DEFAULT_SIZE)
    arrays = {"image": images, "label": labels} if conditional else {"image": images}
    if xflip:
      arrays = {k: np.concatenate([v, v[:, :, ::-1] if k == "image" else v]) for k, v in arrays.items()}

    def reference(n=None):
      return {"image": images[:n], "label": labels[:n]}

    return Dataset(spec=DataSpec("image", tuple(images.shape[1:]),
                                 digits_lib.NUM_CLASSES if conditional else 0),
                   mixture=None, num_examples=arrays["image"].shape[0],
                   batches=pipeline.array_batches(arrays, **shard),
                   num_threads=num_threads or 0, _reference=reference, **common)

  if name in ("tfds", "images"):
    if name == "tfds":
      tfds_name = _get(data_config, "tfds_name")
      if not tfds_name:
        raise ValueError("data.name='tfds' needs data.tfds_name (e.g. 'cifar10').")
      source = tfds_source.open_source(tfds_name, _get(data_config, "tfds_split"),
                                       _get(data_config, "tfds_data_dir"))
      classes, what = tfds_source.num_classes(source), f"tfds dataset {tfds_name!r}"
    else:
      source = image_folder.open_source(_get(data_config, "path"))
      classes, what = source.num_classes, f"data.path {_get(data_config, 'path')!r}"
    if conditional and not classes:
      raise ValueError(f"{what} has no labels (tfds: a ClassLabel 'label' feature; image files: dataset.json); "
                       "set data.conditional=False.")
    decode = tfds_source.DecodeImage(image_size=image_size, keep_label=conditional)
    ref_decode = tfds_source.DecodeImage(image_size=image_size, keep_label=classes > 0)
    train_source = image_folder.XFlip(source) if xflip else source
    return Dataset(spec=DataSpec("image", tfds_source.image_shape(source, image_size),
                                 classes if conditional else 0),
                   mixture=None, num_examples=len(train_source),
                   batches=pipeline.source_batches(train_source, decode, **shard),
                   num_threads=4 if num_threads is None else num_threads,
                   _reference=lambda n=None: tfds_source.read(source, ref_decode, n), **common)

  raise ValueError(f"Unknown data.name {name!r}; allowed names: {', '.join(NAMES)}.")
