"""A small CNN classifier for the embedded 16x16 digits, and the "digits FD" and class accuracy built on it.

The digits stand in for an image dataset whose FID would need Inception: the classifier's penultimate
features (64-d, after a SiLU) play the role of Inception's pool3 features.

    digits_fd       Frechet distance (`frechet.py`) between the features of the given images and those of all
                    1797 real digits (the reference statistics, computed once per process).
    class_accuracy  fraction of the images that the classifier assigns to the requested label (class-
                    conditional generators).
    class_histogram_tv  total-variation distance between the histogram of predicted classes and that of the
                    real labels (0 = balanced like the data; 0.9 = every image in one class): a mode-dropping
                    signal for unconditional generators.

Training (`TrainConfig`) is deterministic: stratified split with 25% held out, fixed seed, 20 epochs of
minibatches of 64 in a seeded order, AdamW with a cosine schedule, random shifts of up to one pixel (the
padding is the background value -1), no jax PRNG (numpy's seeded generator gives the initial parameters, the
order and the shifts). Training ~15 s of CPU time (jit compiles included); two runs gave identical bits.
The trained parameters are cached in $GENDISTILL_CACHE (default ~/.cache/gendistill) under a name carrying
`VERSION` and a hash of `TrainConfig`: change either and the classifier is retrained. The file is written
atomically (temporary file + os.replace) under an exclusive file lock, so concurrent processes (pytest -n 2)
train it once and never read a partial file. Bump `VERSION` whenever the model or the training code changes.

Measured (VERSION 1, default TrainConfig, jax 0.10.2, CPU):
  held-out accuracy 0.9889 (450 images never trained on); training accuracy 1.000; all 1797: 0.9972.
  Scale of digits FD. "A" and "B" are a random split of the real digits into 899 + 898 images; the reference
  is all 1797 (so A is part of it, which lowers its value). Degradations are applied to A.
                                          vs reference   vs B
    real A                                        1.10    4.31
    A + Gaussian noise std 0.05, clipped          1.26    4.53
    A + Gaussian noise std 0.1,  clipped          1.68    5.02
    A + Gaussian noise std 0.2,  clipped          4.01    7.52
    A + Gaussian noise std 0.3,  clipped          8.68   12.13
    A blurred, Gaussian sigma 0.5 px              2.80    5.96
    A blurred, Gaussian sigma 0.7 px              9.33   12.44
    A blurred, Gaussian sigma 1.0 px             30.16   33.15
    real, the 0s only (178 images)              714.5   727.5
    N(0, 1) noise clipped to [-1, 1] (899)      685.2   691.7
    uniform noise in [-1, 1] (899)              742.0   748.7
  A perfect generator's samples are independent of the reference, so its floor is not the 1.10 of A (part of
  the reference) but a few-sample bias: assuming it scales as 1/N1 + 1/N2 (A vs B: 4.31), roughly
  1940 * (1/N + 1/1797), i.e. ~3.2 at N = 899, ~2.2 at N = 1797, ~1.3 at N = 10000.
  class_accuracy of the real digits with their labels 0.997, with shuffled labels 0.11.
  (`python -m gendistill.evaluation.digits_classifier` prints these again.)
  Like FID, digits FD is biased upward for few samples; compare values at the same N (>= 65, the feature
  dimension + 1, for a full-rank covariance; 1000+ preferred).
"""
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from gendistill.data.digits import NUM_CLASSES, load_digits
from gendistill.evaluation.frechet import feature_statistics, frechet_distance
from gendistill.evaluation.grid import to_uint8

VERSION = 1
CACHE_ENV = "GENDISTILL_CACHE"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines the trained classifier (hashed into the cache file name)."""
  image_size: int = 16
  widths: tuple = (32, 32, 64)
  feature_dim: int = 64
  seed: int = 0
  test_fraction: float = 0.25
  epochs: int = 20
  batch_size: int = 64
  learning_rate: float = 2e-3
  weight_decay: float = 1e-4
  max_shift: int = 1


class DigitsClassifier(nn.Module):
  """conv-conv-pool-conv-pool-dense(features)-dense(logits); input [N, 16, 16, 1] in [-1, 1]."""
  widths: tuple = (32, 32, 64)
  feature_dim: int = 64
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    """Returns (logits [N, num_classes], features [N, feature_dim])."""
    w0, w1, w2 = self.widths
    x = nn.silu(nn.Conv(w0, (3, 3))(x))
    x = nn.silu(nn.Conv(w1, (3, 3))(x))
    x = _avg_pool2(x)
    x = nn.silu(nn.Conv(w2, (3, 3))(x))
    x = _avg_pool2(x)
    x = x.reshape(x.shape[0], -1)
    features = nn.silu(nn.Dense(self.feature_dim)(x))
    return nn.Dense(self.num_classes)(features), features


def _avg_pool2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _model(config):
  return DigitsClassifier(widths=tuple(config.widths), feature_dim=config.feature_dim)


def split_indices(labels, test_fraction=0.25, seed=0):
  """Stratified, seeded split -> (train indices, test indices), both sorted."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    rng.shuffle(idx)
    test.append(idx[:int(round(test_fraction * len(idx)))])
  test = np.sort(np.concatenate(test))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def _shift(images, offsets, max_shift):
  """Shifts image i by offsets[i] - max_shift pixels (offsets in [0, 2 max_shift]^2), filling with -1."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                   constant_values=-1.0)
  return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)


def _init_params(model, config, image_shape):
  """Initial parameters from numpy's seeded generator: kernels N(0, 1/fan_in) (LeCun), biases 0.

  No jax PRNG in training at all: threefry programs take seconds to compile on a busy CPU, and numpy's
  generator gives the same numbers on every backend and jax version.
  """
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  rng = np.random.default_rng((config.seed, 0))
  flat = traverse_util.flatten_dict(abstract)
  out = {}
  for path in sorted(flat):
    leaf = flat[path]
    if path[-1] == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      out[path] = (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    else:
      out[path] = np.zeros(leaf.shape, leaf.dtype)
  return traverse_util.unflatten_dict(out)


def train_classifier(config=TrainConfig(), verbose=False):
  """Trains the classifier deterministically -> (params, info dict with accuracies and timing)."""
  start = time.time()
  images, labels = load_digits(config.image_size)
  train_idx, test_idx = split_indices(labels, config.test_fraction, config.seed)
  x_train, y_train = images[train_idx], labels[train_idx]
  model = _model(config)
  params = _init_params(model, config, images.shape[1:])
  steps_per_epoch = len(y_train) // config.batch_size
  schedule = optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps_per_epoch)
  optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
  opt_state = jax.jit(optimizer.init)(params)

  def loss_fn(p, x, y):
    logits, _ = model.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # One jitted step driven from Python: on XLA:CPU (jaxlib 0.10) the same step inside lax.scan ran ~40x
  # slower (convolutions inside a while loop), so no scan over the epoch here.
  @jax.jit
  def step(p, s, x, y, offsets):
    if config.max_shift:
      x = _shift(x, offsets, config.max_shift)
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  loss = np.nan
  for epoch in range(config.epochs):
    rng = np.random.default_rng((config.seed, 1, epoch))
    order = rng.permutation(len(y_train))
    for i in range(steps_per_epoch):
      idx = order[i * config.batch_size:(i + 1) * config.batch_size]
      offsets = rng.integers(0, 2 * config.max_shift + 1, size=(len(idx), 2), dtype=np.int32)
      params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx], offsets)
    if verbose:
      print(f"digits classifier: epoch {epoch + 1}/{config.epochs} loss {float(loss):.4f}", flush=True)
  params = jax.device_get(params)
  logits, _ = jax.jit(model.apply)(params, jnp.asarray(images))
  correct = np.asarray(jnp.argmax(logits, -1)) == labels
  info = {
      "version": VERSION,
      "config": dataclasses.asdict(config),
      "final_loss": float(loss),
      "train_accuracy": float(correct[train_idx].mean()),
      "test_accuracy": float(correct[test_idx].mean()),
      "num_train": int(len(train_idx)),
      "num_test": int(len(test_idx)),
      "train_seconds": time.time() - start,
      "jax_version": jax.__version__,
  }
  return params, json.loads(json.dumps(info))  # as it reads back from the cache file (tuples -> lists)


# ------------------------------------------------------------------------------------------------- cache.


def cache_dir():
  return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gendistill").expanduser()


def cache_path(config=TrainConfig()):
  payload = json.dumps({"version": VERSION, **dataclasses.asdict(config)}, sort_keys=True, default=list)
  digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
  return cache_dir() / f"digits_classifier_v{VERSION}_{digest}.npz"


@contextlib.contextmanager
def _exclusive_lock(path):
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # not POSIX: atomic replace still prevents partial files; training may be duplicated
    yield
    return
  with open(path, "a", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _save(path, params, info):
  flat = traverse_util.flatten_dict(params, sep="/")
  arrays = {f"param:{k}": np.asarray(v) for k, v in flat.items()}
  arrays["info"] = np.array(json.dumps(info))
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is meant to be shared
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def _load(path):
  with np.load(path, allow_pickle=False) as data:
    info = json.loads(str(data["info"]))
    flat = {k[len("param:"):]: np.array(data[k]) for k in data.files if k.startswith("param:")}
  return traverse_util.unflatten_dict(flat, sep="/"), info


def _try_load(path, config, warn=True):
  if not path.exists():
    return None
  try:
    params, info = _load(path)
    if info.get("version") != VERSION or info.get("config") != json.loads(
        json.dumps(dataclasses.asdict(config), default=list)):
      raise ValueError("cache file does not match this version/config")
    return params, info
  except Exception as e:  # pylint: disable=broad-except
    if warn:
      warnings.warn(f"ignoring unreadable digits classifier cache {path}: {e!r}", RuntimeWarning)
    return None


def load_or_train(config=TrainConfig(), use_cache=True, verbose=False):
  """The trained classifier (params, info): from the cache file if present, else trained (and cached)."""
  if not use_cache:
    return train_classifier(config, verbose=verbose)
  path = cache_path(config)
  found = _try_load(path, config, warn=False)  # fast path, no lock; a bad file is reported below
  if found is not None:
    return found
  with contextlib.ExitStack() as stack:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      stack.enter_context(_exclusive_lock(str(path) + ".lock"))
    except OSError as e:
      warnings.warn(f"digits classifier cache {path.parent} not usable ({e}); training without caching",
                    RuntimeWarning)
      return train_classifier(config, verbose=verbose)
    found = _try_load(path, config)  # another process may have trained it while we waited for the lock
    if found is not None:
      return found
    params, info = train_classifier(config, verbose=verbose)
    try:
      _save(path, params, info)
    except OSError as e:
      warnings.warn(f"could not write digits classifier cache {path}: {e}", RuntimeWarning)
    return params, info


# ------------------------------------------------------------------------------------------------ metric.


class DigitsMetric:
  """The trained classifier with its reference statistics: features, predictions, digits FD, class accuracy.

  Images are [N, S, S, 1] or [N, S, S] in [-1, 1] with S = config.image_size (16), numpy or jax arrays. They
  are not clipped (pass quantize=True to `digits_metrics` to score them as saved 8-bit images).
  """

  def __init__(self, config=TrainConfig(), params=None, info=None, use_cache=True, batch_size=512,
               verbose=False):
    if params is None:
      params, info = load_or_train(config, use_cache=use_cache, verbose=verbose)
    self.config = config
    self.params = params
    self.info = dict(info or {})
    self.batch_size = int(batch_size)
    self._apply = jax.jit(_model(config).apply)
    self._reference = None

  @property
  def test_accuracy(self):
    return self.info.get("test_accuracy")

  def _prepare(self, images):
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
      images = images[..., None]
    s = self.config.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 1):
      raise ValueError(f"digits images must be [N, {s}, {s}, 1] or [N, {s}, {s}], got {images.shape}")
    return images

  def logits_and_features(self, images):
    """(logits [N, 10], features [N, feature_dim]) as float32 numpy arrays, in fixed-size padded batches."""
    images = self._prepare(images)
    n, b = images.shape[0], self.batch_size
    logits, features = [], []
    for start in range(0, n, b):
      chunk = images[start:start + b]
      m = chunk.shape[0]
      if m < b:  # pad to the fixed batch so that one compiled program serves every call
        chunk = np.concatenate([chunk, np.zeros((b - m,) + chunk.shape[1:], chunk.dtype)])
      lg, ft = self._apply(self.params, chunk)
      logits.append(np.asarray(lg)[:m])
      features.append(np.asarray(ft)[:m])
    if not logits:
      return (np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, self.config.feature_dim), np.float32))
    return np.concatenate(logits), np.concatenate(features)

  def features(self, images):
    return self.logits_and_features(images)[1]

  def logits(self, images):
    return self.logits_and_features(images)[0]

  def predict(self, images):
    return np.argmax(self.logits(images), axis=-1).astype(np.int32)

  def reference_statistics(self):
    """(mu, sigma) of the features of all 1797 real digits; computed once per instance."""
    if self._reference is None:
      images, labels = load_digits(self.config.image_size)
      logits, features = self.logits_and_features(images)
      counts = np.bincount(labels, minlength=NUM_CLASSES)
      self._reference = (*feature_statistics(features), counts / counts.sum())
    return self._reference[:2]

  def frechet_distance(self, images):
    """digits FD of the images against all real digits."""
    return frechet_distance(*feature_statistics(self.features(images)), *self.reference_statistics())

  def digits_metrics(self, images, labels=None, quantize=False):
    """{'digits_fd', 'class_histogram_tv', 'class_accuracy' (if labels given)} as floats.

    quantize: first round the images to 8 bits as a saved PNG would (EDM's uint8(clip(x*127.5 + 128))).
    """
    images = self._prepare(images)
    if quantize:
      images = to_uint8(images).astype(np.float32) / 127.5 - 1.0
    logits, features = self.logits_and_features(images)
    mu, sigma = self.reference_statistics()
    predicted = np.argmax(logits, axis=-1)
    histogram = np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)
    out = {
        "digits_fd": frechet_distance(*feature_statistics(features), mu, sigma),
        "class_histogram_tv": float(0.5 * np.abs(histogram - self._reference[2]).sum()),
    }
    if labels is not None:
      labels = np.asarray(labels).reshape(-1)
      if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
      out["class_accuracy"] = float(np.mean(predicted == labels))
    return out


@functools.lru_cache(maxsize=None)
def get_digits_metric(config=TrainConfig()):
  """The process-wide DigitsMetric for `config` (trained or loaded from the cache on first use)."""
  return DigitsMetric(config)


def digits_metrics(images, labels=None, quantize=False):
  """`DigitsMetric.digits_metrics` with the default classifier: digits_fd, class_histogram_tv, class_accuracy."""
  return get_digits_metric().digits_metrics(images, labels=labels, quantize=quantize)


def _scale_report():
  """Prints the held-out accuracy and the digits-FD scale quoted in the module docstring."""
  from scipy.ndimage import gaussian_filter  # pylint: disable=g-import-not-at-top

  metric = DigitsMetric(verbose=True)
  print("info:", json.dumps(metric.info))
  images, labels = load_digits(metric.config.image_size)
  rng = np.random.default_rng(123)
  perm = rng.permutation(len(labels))
  half_a, half_b = images[perm[:899]], images[perm[899:]]
  stats_b = feature_statistics(metric.features(half_b))
  rows = [("real half A", half_a)]
  rows += [(f"A + noise std {s}, clipped", np.clip(half_a + s * rng.standard_normal(half_a.shape), -1, 1))
           for s in (0.05, 0.1, 0.2, 0.3)]
  rows += [(f"A blurred, sigma {s} px", gaussian_filter(half_a, sigma=(0, s, s, 0), mode="nearest"))
           for s in (0.5, 0.7, 1.0)]
  rows += [("real, the 0s only (178)", images[labels == 0]),
           ("N(0,1) noise clipped (899)", np.clip(rng.standard_normal(half_a.shape), -1, 1)),
           ("uniform noise (899)", rng.uniform(-1, 1, half_a.shape))]
  print(f"  {'images':32s} {'vs reference':>13s} {'vs half B':>10s}")
  for name, x in rows:
    feats = metric.features(x)
    vs_ref = frechet_distance(*feature_statistics(feats), *metric.reference_statistics())
    vs_b = frechet_distance(*feature_statistics(feats), *stats_b)
    print(f"  {name:32s} {vs_ref:13.2f} {vs_b:10.2f}")
  print("real with labels:", metric.digits_metrics(images, labels))
  print("real with shuffled labels:", metric.digits_metrics(images, rng.permutation(labels)))


if __name__ == "__main__":
  _scale_report()
