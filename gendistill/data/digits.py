"""The handwritten digits that scikit-learn ships (1797 images, 8x8, ten classes), embedded and offline.

Images are scaled from [0, 16] to [-1, 1] and resized to `size` x `size` (default 16) with linear
interpolation, so that a UNet can halve the resolution twice. NHWC with one channel.
"""
import functools

import numpy as np

NUM_CLASSES = 10
DEFAULT_SIZE = 16


@functools.lru_cache(maxsize=4)
def load_digits(size: int = DEFAULT_SIZE):
  """Returns (images float32 [1797, size, size, 1] in [-1, 1], labels int32 [1797])."""
  import jax  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  bunch = datasets.load_digits()
  images = bunch.images.astype(np.float32) / 16.0 * 2.0 - 1.0
  if size != 8:
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      images = np.asarray(jax.image.resize(images, (images.shape[0], size, size), method="linear"))
  images = np.clip(images, -1.0, 1.0)[..., None]
  labels = bunch.target.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels
