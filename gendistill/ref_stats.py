"""Reference statistics for FID: the Inception pool features' mean and covariance of a dataset, as an .npz.

    python -m gendistill.ref_stats --data=cifar10_train.zip --inception_weights=pt_inception.npz --out=ref.npz
    python -m gendistill.ref_stats --tfds=cifar10 --tfds_data_dir=DIR --inception_weights=... --out=ref.npz
    python -m gendistill.ref_stats --workdir=RUN --inception_weights=... --out=ref.npz   # the run's data

The file holds `mu` [2048], `sigma` [2048, 2048] (float64, unbiased covariance), as EDM's reference files, plus
`num_samples` and `preprocessing`; use it as --ref_stats of gendistill.evaluate or eval.ref_stats. Every image
of the dataset is used unless --num is given; the images are read in batches (never all in memory at once).
`--preprocessing` must match what the statistics will be compared with: 'nvidia' (default; EDM's reference
files were made with NVIDIA's detector) or 'pytorch_fid'. See docs/evaluation.md.
"""
import sys
from typing import Iterator, Optional

from absl import app, flags

import gendistill  # noqa: F401  (CPU flags before jax starts)
import ml_collections
import numpy as np

from gendistill import paths
from gendistill.evaluation import evaluator as evaluator_lib

_DATA = _TFDS = _SPLIT = _TFDS_DIR = _WORKDIR = _IMAGE_SIZE = _NUM = _WEIGHTS = _PREPROCESSING = _BATCH = _OUT = None


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  global _DATA, _TFDS, _SPLIT, _TFDS_DIR, _WORKDIR, _IMAGE_SIZE, _NUM, _WEIGHTS, _PREPROCESSING, _BATCH, _OUT
  _DATA = flags.DEFINE_string("data", None, "A directory or .zip of images (EDM's layout) or an .npz with 'images'.")
  _TFDS = flags.DEFINE_string("tfds", None, "A prepared tfds dataset name, e.g. cifar10 (see --tfds_data_dir).")
  _SPLIT = flags.DEFINE_string("split", "train", "The tfds split.")
  _TFDS_DIR = flags.DEFINE_string("tfds_data_dir", "", "The tfds data directory ('' = tfds' default).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir: use its data section.")
  _IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Resize to this square size first (0 = as stored).")
  _NUM = flags.DEFINE_integer("num", 0, "Use the first N images (0 = all).")
  _WEIGHTS = flags.DEFINE_string("inception_weights", None, "Local Inception weights (.pth of pytorch-fid or .npz).")
  _PREPROCESSING = flags.DEFINE_enum("preprocessing", evaluator_lib.DEFAULT_PREPROCESSING, ["nvidia", "pytorch_fid"],
                                     "Inception input pipeline.")
  _BATCH = flags.DEFINE_integer("batch_size", 100, "Inception batch size.")
  _OUT = flags.DEFINE_string("out", None, "Output .npz.")


def data_config(data=None, tfds=None, split="train", tfds_data_dir="", workdir=None, image_size=0):
  """The data section to read, from exactly one of data / tfds / workdir."""
  if sum(x is not None for x in (data, tfds, workdir)) != 1:
    raise ValueError("Pass exactly one of --data (image files), --tfds (a prepared tfds dataset) and --workdir.")
  if workdir is not None:
    from gendistill import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    info = ckpt_lib.read_run_info(workdir)
    if info is None:
      raise FileNotFoundError(f"{workdir!r} holds no gendistill run (config.json is missing).")
    cfg = ml_collections.ConfigDict(info["config"]["data"])
    if image_size:
      cfg.image_size = image_size
    return cfg
  if data is not None:
    return ml_collections.ConfigDict(dict(name="images", path=data, image_size=image_size))
  return ml_collections.ConfigDict(dict(name="tfds", tfds_name=tfds, tfds_split=split, tfds_data_dir=tfds_data_dir,
                                        image_size=image_size))


def image_batches(cfg, num: int = 0, batch_size: int = 100):
  """(total, iterator of image batches) of the data section `cfg`: uint8 [b, H, W, C] read from the source in
  order for image files and tfds; the embedded digits in [-1, 1] (quantised like samples by the extractor)."""
  from gendistill import data as data_lib  # pylint: disable=g-import-not-at-top
  from gendistill.data import image_folder, tfds_source  # pylint: disable=g-import-not-at-top
  name = cfg.get("name")
  if name not in ("images", "tfds"):
    cfg = ml_collections.ConfigDict({**cfg.to_dict(), "batch_size": 1, "conditional": False, "xflip": False})
    images = data_lib.build(cfg).reference(num or None)
    if "image" not in images:
      raise ValueError(f"data.name={name!r} has no images: FID needs image data.")
    return images["image"].shape[0], iter([images["image"]])
  if name == "images":
    source = image_folder.open_source(cfg.path)
  else:
    source = tfds_source.open_source(cfg.tfds_name, cfg.get("tfds_split", "train"), cfg.get("tfds_data_dir", ""))
  total = len(source) if not num else min(num, len(source))
  size = int(cfg.get("image_size", 0) or 0)

  def read(i):
    image = np.asarray(source[i]["image"])
    image = image[..., None] if image.ndim == 2 else image
    if size and image.shape[:2] != (size, size):
      image = tfds_source._resize(image, size)  # pylint: disable=protected-access
    return image

  def batches() -> Iterator[np.ndarray]:
    for start in range(0, total, batch_size):
      yield np.stack([read(i) for i in range(start, min(start + batch_size, total))])
  return total, batches()


def compute(cfg, weights: str, preprocessing: str = evaluator_lib.DEFAULT_PREPROCESSING, num: int = 0,
            batch_size: int = 100, progress: bool = False, features=None):
  """{'mu', 'sigma', 'num_samples', 'preprocessing'} of the data section `cfg`. `features`: an extractor to use
  (default: InceptionFeatures from `weights`)."""
  from gendistill.evaluation import frechet, inception  # pylint: disable=g-import-not-at-top
  if features is None:
    features = inception.InceptionFeatures.from_file(weights, preprocessing=preprocessing)
  total, batches = image_batches(cfg, num, batch_size)
  pool = features.features(batches, batch_size=batch_size, progress=progress, total=total)["pool"]
  mu, sigma = frechet.feature_statistics(pool)
  return dict(mu=mu, sigma=sigma, num_samples=np.int64(pool.shape[0]), preprocessing=np.str_(preprocessing))


def write(stats, out: str):
  paths.save_npz(out, **stats)   # local or gs://...


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from gendistill import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  cfg = data_config(_DATA.value, _TFDS.value, _SPLIT.value, _TFDS_DIR.value, _WORKDIR.value, _IMAGE_SIZE.value)
  stats = compute(cfg, _WEIGHTS.value, _PREPROCESSING.value, _NUM.value, _BATCH.value, progress=sys.stderr.isatty())
  write(stats, _OUT.value)
  print(f"Wrote mu/sigma of {int(stats['num_samples'])} images ({_PREPROCESSING.value} preprocessing) to "
        f"{_OUT.value}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["inception_weights", "out"])
  app.run(main)
