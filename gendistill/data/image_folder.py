"""Image datasets in EDM's layout: a directory or a .zip of images, or an .npz of arrays.

Directory / zip (what EDM's `dataset_tool.py` writes): image files at any depth (PNG, JPEG, BMP, WebP, ...),
read in sorted path order, and optionally `dataset.json` at the top with

    {"labels": [["00000/img00000000.png", 6], ["00000/img00000001.png", 9], ...]}

(paths relative to the top, with '/' separators; `"labels": null` means unlabelled). All images must have the
same size and channel count (grayscale or RGB).

.npz: `images` uint8 [N, H, W, C] (or [N, H, W]) and optionally `labels` int [N], e.g. what
`python -m gendistill.generate --out=FILE.npz` writes. Loaded with allow_pickle=False.

A source here is random access (`len`, `[i]`) with records {'image': uint8 [H, W, C], 'label': int} and
`num_classes` (0 without labels), read through `tfds_source.DecodeImage` like tfds records. `XFlip` doubles any
source with mirrored copies, as EDM's --xflip does (record i + N is record i flipped left-right).
"""
import io
import json
import os
import threading
import zipfile

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


def _is_image(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _decode(data: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as im:
    if im.mode not in ("L", "RGB"):
      im = im.convert("RGB")
    image = np.asarray(im)
  return image[..., None] if image.ndim == 2 else image


class FileSource:
  """Images of a directory or a zip file (see the module docstring)."""

  def __init__(self, path: str):
    self.path = path
    self._local = threading.local()    # one open ZipFile per reader thread
    if os.path.isdir(path):
      self._zip = False
      names = []
      for root, _, files in os.walk(path):
        names += [os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/") for f in files]
    elif zipfile.is_zipfile(path):
      self._zip = True
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
    else:
      raise FileNotFoundError(f"data.path={path!r} is neither a directory, a .zip nor an .npz file.")
    self.names = sorted(n for n in names if _is_image(n))
    if not self.names:
      raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in data.path={path!r}.")
    self.labels = self._read_labels(names)
    self.num_classes = 0 if self.labels is None else int(self.labels.max()) + 1

  def _read_labels(self, names):
    if "dataset.json" not in names:
      return None
    meta = json.loads(self._read("dataset.json"))
    pairs = meta.get("labels") if isinstance(meta, dict) else None
    if pairs is None:
      return None
    by_name = {str(name).replace("\\", "/"): label for name, label in pairs}
    missing = [n for n in self.names if n not in by_name]
    if missing:
      raise ValueError(f"{self.path}/dataset.json has no label for {len(missing)} image(s), e.g. {missing[0]!r}; "
                       "it must list [path, label] for every image (paths relative to the dataset's top).")
    labels = np.asarray([by_name[n] for n in self.names])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
      raise ValueError(f"{self.path}/dataset.json: labels must be non-negative integers (class indices).")
    return labels.astype(np.int32)

  def _read(self, name: str) -> bytes:
    if not self._zip:
      with open(os.path.join(self.path, name), "rb") as f:
        return f.read()
    z = getattr(self._local, "zip", None)
    if z is None:
      z = self._local.zip = zipfile.ZipFile(self.path)  # pylint: disable=consider-using-with
    return z.read(name)

  def __len__(self):
    return len(self.names)

  def __getitem__(self, i):
    record = {"image": _decode(self._read(self.names[int(i)]))}
    if self.labels is not None:
      record["label"] = self.labels[int(i)]
    return record

  def __getstate__(self):   # picklable for reader processes: open zip handles are not
    state = dict(self.__dict__)
    state["_local"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()


class ArraySource:
  """Images of an .npz file (see the module docstring)."""

  def __init__(self, path: str):
    with np.load(path, allow_pickle=False) as f:
      if "images" not in f:
        raise ValueError(f"{path} has no 'images' array (uint8 [N, H, W, C]); it has {sorted(f.keys())}.")
      images = f["images"]
      labels = f["labels"] if "labels" in f else None
    if images.ndim == 3:
      images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"{path}: 'images' must be uint8 [N, H, W, C] with C = 1 or 3, got {images.dtype} "
                       f"{images.shape}.")
    if labels is not None and labels.shape != images.shape[:1]:
      raise ValueError(f"{path}: 'labels' must have shape [{images.shape[0]}], got {labels.shape}.")
    self.images = images
    self.labels = None if labels is None else labels.astype(np.int32)
    self.num_classes = 0 if labels is None else int(labels.max()) + 1

  def __len__(self):
    return self.images.shape[0]

  def __getitem__(self, i):
    record = {"image": self.images[int(i)]}
    if self.labels is not None:
      record["label"] = self.labels[int(i)]
    return record


class XFlip:
  """2N records: record i and, at i + N, record i mirrored left-right (EDM's --xflip)."""

  def __init__(self, source):
    self.source = source
    self.num_classes = getattr(source, "num_classes", 0)

  def __len__(self):
    return 2 * len(self.source)

  def __getitem__(self, i):
    n = len(self.source)
    record = dict(self.source[int(i) % n])
    if int(i) >= n:
      record["image"] = np.ascontiguousarray(record["image"][:, ::-1])
    return record


def open_source(path: str):
  """A FileSource (directory or .zip) or an ArraySource (.npz) for `path`."""
  if not path:
    raise ValueError("data.name='images' needs data.path: a directory or .zip of images (EDM's dataset layout) "
                     "or an .npz with 'images' (and 'labels').")
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path={path!r} does not exist.")
  if path.endswith(".npz"):
    return ArraySource(path)
  return FileSource(path)
