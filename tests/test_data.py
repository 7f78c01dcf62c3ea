"""Tests for gendistill.data: toy2d mixtures, the grain pipeline, digits and tfds sources."""
import io
import json
import sys
from unittest import mock

import ml_collections
import numpy as np
import pytest

from gendistill import data
from gendistill.data import pipeline
from gendistill.data import toy2d


def _config(**overrides):
  cfg = ml_collections.ConfigDict(dict(data.DEFAULTS))
  cfg.update(overrides)
  return cfg


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _concat(shares):
  return {k: np.concatenate([s[k] for s in shares]) for k in shares[0]}


# ----------------------------------------------------------------------------------------------- toy2d


@pytest.mark.parametrize("kind", toy2d.MIXTURE_KINDS)
def test_mixture_moments_match_samples(kind):
  mix = toy2d.mixture(kind)
  k = mix.num_components
  assert mix.weights.shape == (k,) and mix.means.shape == (k, 2) and mix.covs.shape == (k, 2, 2)
  np.testing.assert_allclose(mix.weights.sum(), 1.0)
  n = 200_000
  x, comp = mix.sample(n, seed=3, return_components=True)
  assert x.shape == (n, 2) and x.dtype == np.float32
  np.testing.assert_allclose(x.mean(0), mix.mean(), atol=0.02)
  np.testing.assert_allclose(np.cov(x.T), mix.cov(), atol=0.03)
  # Component frequencies and within-component moments match the parameters.
  np.testing.assert_allclose(np.bincount(comp, minlength=k) / n, mix.weights, atol=0.005)
  for j in (0, k - 1):
    xj = x[comp == j]
    np.testing.assert_allclose(xj.mean(0), mix.means[j], atol=0.02)
    np.testing.assert_allclose(np.cov(xj.T), mix.covs[j], atol=0.01)
  # The toy2d samples are the mixture's, deterministically.
  np.testing.assert_array_equal(toy2d.sample(kind, 1000, seed=3), mix.sample(1000, seed=3))


@pytest.mark.parametrize("base", ["ring8", "grid25"])
def test_mixture_layout(base):
  mix, unequal = toy2d.mixture(base), toy2d.mixture(base + "_unequal")
  k = mix.num_components
  assert k == {"ring8": 8, "grid25": 25}[base]
  np.testing.assert_allclose(mix.weights, np.full(k, 1.0 / k))
  np.testing.assert_allclose(unequal.weights, np.arange(1, k + 1) / (k * (k + 1) / 2))
  np.testing.assert_array_equal(unequal.means, mix.means)
  np.testing.assert_array_equal(unequal.covs, mix.covs)
  # Unit-ish scale, modes well separated (in component standard deviations).
  np.testing.assert_allclose(np.diag(mix.cov()), 1.0, atol=0.02)
  dist = np.linalg.norm(mix.means[:, None] - mix.means[None], axis=-1) + 1e9 * np.eye(k)
  assert dist.min() / np.sqrt(mix.covs[0, 0, 0]) > 9


@pytest.mark.parametrize("kind", toy2d.KINDS)
def test_toy_samples_deterministic_and_scaled(kind):
  a = toy2d.sample(kind, 5000, seed=7)
  assert a.shape == (5000, 2) and a.dtype == np.float32 and np.isfinite(a).all()
  np.testing.assert_array_equal(a, toy2d.sample(kind, 5000, seed=7))
  assert not np.array_equal(a, toy2d.sample(kind, 5000, seed=8))
  assert np.all(np.abs(a.mean(0)) < (0.6 if kind.endswith('_unequal') else 0.05))
  assert np.all((a.std(0) > 0.5) & (a.std(0) < 1.5))
  assert (toy2d.mixture(kind) is None) == (kind in toy2d.SAMPLE_KINDS)
  p = toy2d.pool(kind, 1000)
  assert not p.flags.writeable
  np.testing.assert_array_equal(p, toy2d.sample(kind, 1000, toy2d.POOL_SEED))


def test_unknown_kind_and_name_errors():
  with pytest.raises(ValueError, match=r"'ring9'.*ring8.*moons"):
    toy2d.mixture("ring9")
  with pytest.raises(ValueError, match=r"'ring9'.*grid25"):
    data.build(_config(toy2d_kind="ring9"))
  with pytest.raises(ValueError, match=r"'mnist'.*toy2d.*digits.*tfds"):
    data.build(_config(name="mnist"))
  with pytest.raises(ValueError, match="not divisible"):
    data.build(_config(batch_size=10), process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    data.build(_config(batch_size=8), process_index=2, process_count=2)
  with pytest.raises(ValueError, match="no labels"):
    data.build(_config(conditional=True))
  with pytest.raises(ValueError, match="tfds_name"):
    data.build(_config(name="tfds"))


# -------------------------------------------------------------------------------------------- pipeline


def test_toy_dataset_batches_and_reference():
  ds = data.build(_config(toy2d_kind="grid25_unequal", toy2d_size=4096, batch_size=64))
  assert ds.spec == data.DataSpec("x", (2,), 0) and not ds.spec.conditional and ds.name == "toy2d"
  np.testing.assert_array_equal(ds.mixture.weights, toy2d.mixture("grid25_unequal").weights)
  b = next(ds.iterator())
  assert set(b) == {"x"} and b["x"].shape == (64, 2) and b["x"].dtype == np.float32
  # Batches are drawn from the fixed pool.
  pool = toy2d.pool("grid25_unequal", 4096)
  assert all(np.any(np.all(pool == row, axis=1)) for row in b["x"][:8])
  ref = ds.reference(1000)["x"]
  assert ref.shape == (1000, 2) and ref.dtype == np.float32
  np.testing.assert_array_equal(ref, ds.reference(1000)["x"])
  assert not np.any(np.all(pool[:1000] == ref, axis=1))  # fresh samples, not the pool
  assert ds.reference()["x"].shape == (4096, 2)
  assert data.build(_config(toy2d_kind="moons")).mixture is None


def test_epochs_are_permutations_and_reshuffled():
  batches = pipeline.array_batches({"i": np.arange(64)}, global_batch_size=16, seed=5)
  epochs = [np.concatenate([batches[t]["i"] for t in range(4 * e, 4 * e + 4)]) for e in range(2)]
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(64))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(64))
  other = pipeline.array_batches({"i": np.arange(64)}, global_batch_size=16, seed=6)
  assert not np.array_equal(other[0]["i"], batches[0]["i"])


@pytest.mark.parametrize("n,global_batch,count", [(64, 16, 1), (100, 24, 3), (5, 12, 2), (7, 4, 4)])
def test_batch_indices_follow_the_epoch_stream(n, global_batch, count):
  # The stream is epoch after epoch of permutations; batches run across epoch boundaries (even
  # several epochs within one batch when it is larger than the dataset).
  ref = pipeline.BatchIndices(n, global_batch_size=global_batch, seed=3)
  stream = np.concatenate([ref.permutation(e) for e in range(12 * global_batch // n + 2)])
  shares = [pipeline.BatchIndices(n, global_batch_size=global_batch, seed=3, process_index=p,
                                  process_count=count) for p in range(count)]
  for t in range(12):
    np.testing.assert_array_equal(np.concatenate([s(t) for s in shares]),
                                  stream[t * global_batch:(t + 1) * global_batch])


def test_iterator_deterministic():
  cfg = _config(toy2d_kind="ring8", toy2d_size=1000, batch_size=32, seed=3)
  _assert_batches_equal(_take(data.build(cfg).iterator(), 5), _take(data.build(cfg).iterator(), 5))
  first = next(data.build(cfg).iterator())["x"]
  cfg.seed = 4
  assert not np.array_equal(next(data.build(cfg).iterator())["x"], first)


@pytest.mark.parametrize("name", ["toy2d", "digits"])
def test_resume_from_state_is_exact(name):
  cfg = _config(name=name, toy2d_size=100, batch_size=24, seed=11, conditional=name == "digits")
  it = data.build(cfg).iterator()
  _take(it, 7)  # crosses epoch boundaries for toy2d (pool of 100)
  state = it.get_state()
  state = json.loads(json.dumps(state))  # JSON-serialisable
  expected = _take(it, 6)
  fresh = data.build(cfg).iterator()
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 6), expected)
  # set_state also rewinds an iterator that has already gone further.
  _take(it, 3)
  it.set_state(state)
  _assert_batches_equal(_take(it, 6), expected)


@pytest.mark.parametrize("count", [2, 4])
def test_process_shares_compose_global_batch(count):
  cfg = _config(name="digits", batch_size=32, seed=2, conditional=True)
  single = _take(data.build(cfg).iterator(), 3)
  shares = [data.build(cfg, p, count) for p in range(count)]
  assert all(s.batch_size == 32 // count and s.global_batch_size == 32 for s in shares)
  per_process = [_take(s.iterator(), 3) for s in shares]
  for t in range(3):
    assert per_process[0][t]["image"].shape == (32 // count, 16, 16, 1)
    _assert_batches_equal([_concat([pp[t] for pp in per_process])], [single[t]])


def test_state_is_process_independent():
  cfg = _config(toy2d_size=50, batch_size=8, seed=1)
  it = data.build(cfg).iterator()
  _take(it, 9)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 4)
  resumed = []
  for p in range(2):
    share = data.build(cfg, p, 2).iterator()
    share.set_state(state)
    resumed.append(_take(share, 4))
  _assert_batches_equal([_concat([r[t] for r in resumed]) for t in range(4)], expected)


class _ListSource:
  """A minimal random-access source of per-record dicts."""

  def __init__(self, x):
    self._x = x

  def __len__(self):
    return len(self._x)

  def __getitem__(self, i):
    return {"x": self._x[i]}


def test_source_and_array_paths_agree():
  x = toy2d.sample("moons", 100, seed=0)
  kw = dict(global_batch_size=12, seed=9, process_index=1, process_count=3)
  a = pipeline.array_batches({"x": x}, **kw)
  s = pipeline.source_batches(_ListSource(x), **kw)
  _assert_batches_equal([a[t] for t in range(20)], [s[t] for t in range(20)])
  it = pipeline.make_iterator(s, num_threads=2)
  _assert_batches_equal(_take(it, 20), [a[t] for t in range(20)])


def test_digits_values_and_labels():
  cond = data.build(_config(name="digits", batch_size=64, conditional=True))
  assert cond.spec == data.DataSpec("image", (16, 16, 1), 10) and cond.mixture is None
  assert cond.name == "digits" and cond.num_examples == 1797
  b = next(cond.iterator())
  assert b["image"].shape == (64, 16, 16, 1) and b["image"].dtype == np.float32
  assert b["image"].min() >= -1 and b["image"].max() <= 1
  assert b["label"].dtype == np.int32 and set(b["label"]) <= set(range(10))
  uncond = data.build(_config(name="digits", batch_size=64, conditional=False))
  assert uncond.spec.num_classes == 0
  b2 = next(uncond.iterator())
  assert set(b2) == {"image"}
  np.testing.assert_array_equal(b2["image"], b["image"])  # same order either way
  ref = uncond.reference()
  assert ref["image"].shape == (1797, 16, 16, 1) and ref["label"].shape == (1797,)
  assert uncond.reference(10)["image"].shape == (10, 16, 16, 1)


# ------------------------------------------------------------------------------------------------ tfds


def _tfds_config(**overrides):
  return _config(**{**dict(name="tfds", tfds_name="cifar10", tfds_split="train", batch_size=8,
                           seed=4, conditional=True), **overrides})


def test_tfds_mock_cifar10_without_tensorflow():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    ds = data.build(_tfds_config(), num_threads=2)
    assert ds.spec == data.DataSpec("image", (32, 32, 3), 10) and ds.num_examples == 20
    it = ds.iterator()
    first = _take(it, 4)  # 32 records from 20: crosses an epoch
    for b in first:
      assert set(b) == {"image", "label"}
      assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
      assert b["image"].min() >= -1 and b["image"].max() <= 1 and b["image"].std() > 0.3
      assert b["label"].dtype == np.int32 and b["label"].shape == (8,)
      assert b["label"].min() >= 0 and b["label"].max() < 10
    # Resume.
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 3)
    fresh = data.build(_tfds_config(), num_threads=2).iterator()
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 3), expected)
    # Process shares.
    shares = [_take(data.build(_tfds_config(), p, 2).iterator(), 4) for p in range(2)]
    _assert_batches_equal([_concat([s[t] for s in shares]) for t in range(4)], first)
    # Decoding: uint8 -> [-1, 1], same record order as the source.
    source = tfds.data_source("cifar10", split="train")
    ref = ds.reference(5)
    np.testing.assert_allclose(ref["image"][3], source[3]["image"] / 127.5 - 1, atol=1e-6)
    assert ref["label"][3] == source[3]["label"]
    # Resizing and unconditional.
    small = data.build(_tfds_config(image_size=16, conditional=False))
    assert small.spec == data.DataSpec("image", (16, 16, 3), 0)
    b = next(small.iterator())
    assert set(b) == {"image"} and b["image"].shape == (8, 16, 16, 3)
    assert b["image"].min() >= -1 and b["image"].max() <= 1
  assert "tensorflow" not in sys.modules


def _pil_encode_png(self, image):
  del self
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
  return buf.getvalue()


def _tiny_images(n):
  rng = np.random.default_rng(n)
  return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 3


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  """A real array_record tfds dataset, written without TensorFlow (PNG encoded with PIL)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.core.features import image_feature  # pylint: disable=g-import-not-at-top

  class GendistillTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(8, 8, 3)),
          "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(12), "test": self._generate_examples(5)}

    def _generate_examples(self, n):
      images, labels = _tiny_images(n)
      for i in range(n):
        yield i, {"image": images[i], "label": int(labels[i])}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with mock.patch.object(image_feature._ImageEncoder, "_encode_image", _pil_encode_png):  # pylint: disable=protected-access
    GendistillTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return data_dir


def test_tfds_real_array_record_without_tensorflow(tiny_tfds_dir):
  cfg = _config(name="tfds", tfds_name="gendistill_tiny_images", tfds_split="train",
                tfds_data_dir=tiny_tfds_dir, batch_size=6, seed=0, conditional=True)
  ds = data.build(cfg)
  assert ds.spec == data.DataSpec("image", (8, 8, 3), 3) and ds.num_examples == 12
  images, labels = _tiny_images(12)
  want = {(im.tobytes(), int(lb)) for im, lb in zip(images, labels)}
  # One epoch = 2 batches: every record exactly once, decoded exactly (PNG is lossless).
  epoch = _concat(_take(ds.iterator(), 2))
  got = {(np.round((im + 1) * 127.5).astype(np.uint8).tobytes(), int(lb))
         for im, lb in zip(epoch["image"], epoch["label"])}
  assert got == want
  shares = [_take(data.build(cfg, p, 3, num_threads=1).iterator(), 3) for p in range(3)]
  _assert_batches_equal([_concat([s[t] for s in shares]) for t in range(3)],
                        _take(ds.iterator(), 3))
  test = data.build(_config(name="tfds", tfds_name="gendistill_tiny_images", tfds_split="test",
                            tfds_data_dir=tiny_tfds_dir, batch_size=5, image_size=4))
  assert test.num_examples == 5 and test.spec == data.DataSpec("image", (4, 4, 3), 0)
  assert next(test.iterator())["image"].shape == (5, 4, 4, 3)
  assert test.reference()["label"].shape == (5,)
  assert "tensorflow" not in sys.modules
