"""One evaluator for a run, used by the training loop (metric versus step) and by `python -m gendistill.evaluate`.

    evaluate = make_evaluator(dataset, config.eval, batch_sharding)
    metrics = evaluate(samples, labels)     # samples in the data's range ([-1, 1] images or 2-D points)

It reports the dataset's offline metrics (toy2d: MMD, sliced Wasserstein, energy distance, mode coverage; digits:
digits FD and class accuracy) and, when `eval.inception_weights` names a local Inception file, FID, KID, IS and
precision/recall against `eval.ref_stats` (an .npz with mu and sigma, e.g. EDM's) and/or `eval.ref_images` real
images of the dataset. The reference features are computed once, when the evaluator is made.

`eval.inception_preprocessing` picks the Inception input pipeline (gendistill/evaluation/inception.py):
'nvidia' (the default: the resize of NVIDIA's detector, with which EDM's published reference statistics such
as cifar10-32x32.npz were computed) or 'pytorch_fid' (for statistics made with pytorch-fid). FID against a
reference file is only meaningful with the pipeline that made the file.
"""
from typing import Callable, Dict, Optional

import numpy as np

from gendistill.evaluation import digits_classifier
from gendistill.evaluation import toy_metrics

Evaluator = Callable[[np.ndarray, Optional[np.ndarray]], Dict[str, float]]
# The pipeline of EDM's reference statistics (NVIDIA's Inception detector).
DEFAULT_PREPROCESSING = "nvidia"


def offline_metrics(dataset) -> Optional[Evaluator]:
  """The embedded datasets' own metrics, or None for datasets without one."""
  if dataset.spec.key == "x":
    reference = dataset.reference()["x"]
    return lambda samples, labels: toy_metrics.toy_metrics(samples, reference, dataset.mixture)
  if dataset.name == "digits":
    return digits_classifier.digits_metrics
  return None


def inception_metrics(dataset, weights: str, ref_stats: str = "", ref_images: int = 0, batch_size: int = 100,
                      sharding=None, progress: bool = False,
                      preprocessing: str = DEFAULT_PREPROCESSING) -> Evaluator:
  """FID (and KID, precision/recall with reference images; IS always) with Inception weights from a local file."""
  from gendistill.evaluation import inception, metrics  # pylint: disable=g-import-not-at-top
  if not ref_stats and not ref_images:
    raise ValueError("Inception metrics need a reference: set eval.ref_stats (an .npz with mu and sigma) or "
                     "eval.ref_images (how many of the dataset's real images to use).")
  if dataset.spec.key != "image":
    raise ValueError(f"Inception metrics need images; dataset {dataset.name!r} holds {dataset.spec.key!r}.")
  if sharding is not None and batch_size % sharding.mesh.size:
    batch_size = sharding.mesh.size * max(1, batch_size // sharding.mesh.size)
  extractor = inception.InceptionFeatures.from_file(weights, sharding=sharding, preprocessing=preprocessing)
  stats = metrics.load_stats(ref_stats) if ref_stats else None
  ref_pool = None
  if ref_images:
    ref_pool = extractor.features(dataset.reference(ref_images)["image"], batch_size=batch_size,
                                  progress=progress)["pool"]

  def evaluate(samples, labels):
    del labels
    out = extractor.features(samples, batch_size=batch_size, progress=progress)
    return metrics.compute_metrics(out["pool"], out["logits"], ref_stats=stats, ref_pool=ref_pool)
  return evaluate


def make_evaluator(dataset, eval_config, sharding=None, progress: bool = False) -> Optional[Evaluator]:
  """Offline metrics plus, with eval_config.inception_weights, Inception metrics; None when there is nothing.

  `sharding`: the batch sharding of a single-process mesh, to split Inception batches over its devices. With
  several processes pass None: every process holds all samples and computes the features itself (the outputs of
  a multi-process sharded call would not be addressable on one host).
  """
  parts = [p for p in (offline_metrics(dataset),) if p is not None]
  if eval_config.get("inception_weights"):
    parts.append(inception_metrics(dataset, eval_config.inception_weights, eval_config.get("ref_stats", ""),
                                   eval_config.get("ref_images", 0), eval_config.get("inception_batch_size", 100),
                                   sharding, progress,
                                   eval_config.get("inception_preprocessing", DEFAULT_PREPROCESSING)))
  if not parts:
    return None

  def evaluate(samples, labels):
    results = {}
    for part in parts:
      results.update({k: float(v) for k, v in part(samples, labels).items()})
    return results
  return evaluate
