"""Real image datasets through ``tfds.data_source`` (array_record files; no TensorFlow at read time).

The dataset must already be prepared in `data_dir` as array_record files; nothing is downloaded here (an
unprepared dataset is an error at once, with the command that prepares it). Preparing needs TensorFlow and the
network, once, on any machine:

    pip install tensorflow
    tfds build cifar10 --data_dir=DIR --file_format=array_record

then train with --config.data.tfds_data_dir=DIR ('' = tfds' default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
Reading parses records with the protos bundled in tfds and decodes PNG/JPEG with OpenCV or PIL.

Each record becomes ``{'image': float32 [H, W, C] in [-1, 1], 'label': int32}`` (label only if asked).
"""
import dataclasses
from typing import Any

import numpy as np


def preparation_hint(name: str, data_dir: str | None = None) -> str:
  where = data_dir or "DIR"
  return (f"Prepare it once (needs TensorFlow and the network): `pip install tensorflow && tfds build {name} "
          f"--data_dir={where} --file_format=array_record`, then pass --config.data.tfds_data_dir={where}.")


def open_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source(name, split=split, data_dir=data_dir)` of a prepared dataset: a random-access sequence of
  records. Never downloads: an unprepared dataset raises FileNotFoundError with the preparation command."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False, try_gcs=False)
  except Exception as e:  # pylint: disable=broad-except
    builder = tfds.builder(name, data_dir=data_dir or None, try_gcs=False)
    if builder.is_prepared():
      raise
    raise FileNotFoundError(
        f"The tfds dataset {name!r} is not prepared in {builder.data_dir} (data.tfds_data_dir="
        f"{data_dir or ''!r}); nothing is downloaded at run time. {preparation_hint(name, data_dir)}") from e


def _features(source):
  info = getattr(source, "dataset_info", None)
  return None if info is None else info.features


def num_classes(source, label_key: str = "label") -> int:
  """The number of classes of the source's ClassLabel feature; 0 if it has none."""
  features = _features(source)
  if features is None or label_key not in features.keys():
    return 0
  return int(getattr(features[label_key], "num_classes", 0) or 0)


def image_shape(source, image_size: int = 0, image_key: str = "image") -> tuple[int, int, int]:
  """Per-sample image shape after decoding (and resizing to image_size x image_size if > 0)."""
  features = _features(source)
  shape = None
  if features is not None and image_key in features.keys():
    shape = tuple(features[image_key].shape)
  if shape is None or None in shape:  # Unknown or variable size: look at a record.
    shape = tuple(np.asarray(source[0][image_key]).shape)
  if len(shape) == 2:
    shape = shape + (1,)
  if image_size:
    shape = (image_size, image_size, shape[-1])
  return shape


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 [H, W, C] to [size, size, C] with PIL (bicubic; antialiased when shrinking)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size, size), resample=Image.Resampling.BICUBIC))
  return out[..., None] if squeeze else out


@dataclasses.dataclass(frozen=True)
class DecodeImage:
  """Record -> {'image': float32 [H, W, C] in [-1, 1], 'label': int32}; a picklable grain transform.

  Square resizing (image_size > 0) happens on uint8 before scaling. Other record keys are dropped.
  """
  image_size: int = 0
  keep_label: bool = True
  image_key: str = "image"
  label_key: str = "label"

  def __call__(self, record: Any) -> dict[str, np.ndarray]:
    image = np.asarray(record[self.image_key])
    if image.ndim == 2:
      image = image[..., None]
    if image.dtype != np.uint8:
      raise ValueError(f"Expected uint8 images under {self.image_key!r}, got {image.dtype}.")
    if self.image_size and image.shape[:2] != (self.image_size, self.image_size):
      image = _resize(image, self.image_size)
    out = {"image": image.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)}
    if self.keep_label:
      out["label"] = np.asarray(record[self.label_key], dtype=np.int32)
    return out


def read(source, decode: DecodeImage, n: int | None = None) -> dict[str, np.ndarray]:
  """The first n records (all if None) of `source`, decoded and stacked in source order."""
  n = len(source) if n is None else min(n, len(source))
  if n <= 0:
    raise ValueError(f"Nothing to read: n={n}, len(source)={len(source)}.")
  records = [decode(source[i]) for i in range(n)]
  return {k: np.stack([r[k] for r in records]) for k in records[0]}
