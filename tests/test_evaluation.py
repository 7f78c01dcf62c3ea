"""Tests for gendistill.evaluation: Frechet distance, digits classifier metrics, toy metrics, grids.

The digits classifier is trained once per machine into the normal cache ($GENDISTILL_CACHE or
~/.cache/gendistill, ~20-30 s on 2 CPU cores) and reused afterwards; with pytest -n 2 the file lock makes one
worker train while the other waits. The cache mechanics themselves are tested on a tiny config in tmp_path.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from gendistill.data.digits import load_digits
from gendistill.evaluation import digits_classifier as dc
from gendistill.evaluation import frechet
from gendistill.evaluation import grid
from gendistill.evaluation.toy_metrics import energy_distance, mixture_metrics, mmd2, sliced_wasserstein
from gendistill.evaluation.toy_metrics import toy_metrics

# ----------------------------------------------------------------------------------------- Frechet distance.


def _random_spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def _independent_frechet(mu1, s1, mu2, s2):
  """Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2), with symmetric eigendecompositions only."""
  w, v = np.linalg.eigh(s1)
  r1 = (v * np.sqrt(np.maximum(w, 0))) @ v.T
  m = r1 @ s2 @ r1
  tr = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh((m + m.T) / 2), 0)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_identical_statistics_is_zero():
  rng = np.random.default_rng(0)
  mu, sigma = rng.standard_normal(16), _random_spd(rng, 16)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(1)
  d = 8
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
  got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  # Commuting covariances (shared eigenvectors): same closed form in the rotated basis.
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  got = frechet.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(got, expected, rtol=1e-8)
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
  np.testing.assert_allclose(frechet.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]), 4.0 + 1.0)


def test_frechet_general_matches_independent_computation():
  rng = np.random.default_rng(2)
  for d in (3, 32):
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2),
                               _independent_frechet(mu1, s1, mu2, s2), rtol=1e-8)
  # Rank-deficient covariances (fewer samples than dimensions) still give the right value.
  s1, s2 = _random_spd(rng, 16, rank=5), _random_spd(rng, 16, rank=7)
  np.testing.assert_allclose(frechet.frechet_distance(mu1[:16] * 0, s1, mu1[:16] * 0, s2),
                             _independent_frechet(np.zeros(16), s1, np.zeros(16), s2), rtol=1e-5, atol=1e-6)


def test_frechet_failed_sqrtm_falls_back_to_the_symmetric_route_with_a_warning(monkeypatch):
  rng = np.random.default_rng(3)
  mu, s1, s2 = rng.standard_normal(4), _random_spd(rng, 4), _random_spd(rng, 4)
  expected = _independent_frechet(mu, s1, mu, s2)
  real_sqrtm, calls = scipy.linalg.sqrtm, []

  def failing_once(a):
    calls.append(1)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(scipy.linalg, "sqrtm", failing_once)
  with pytest.warns(RuntimeWarning, match="singular or inaccurate"):
    got = frechet.frechet_distance(mu, s1, mu, s2)
  assert len(calls) == 1                                 # the symmetric route replaced the failed square root
  np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_frechet_of_singular_covariances_skips_scipy_sqrtm(monkeypatch):
  """Fewer samples than dimensions: the exact symmetric route, without scipy's slow square root."""
  rng = np.random.default_rng(5)
  s1, s2 = _random_spd(rng, 64, rank=9), _random_spd(rng, 64, rank=13)
  mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
  monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: pytest.fail("sqrtm called on a singular covariance"))
  np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2), _independent_frechet(mu1, s1, mu2, s2),
                             rtol=1e-6)
  # Commuting singular covariances: the closed form sum (sqrt(a) - sqrt(b))^2 over the eigenvalues.
  q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
  a, b = np.r_[rng.uniform(0.5, 2, 9), np.zeros(55)], np.r_[np.zeros(5), rng.uniform(0.5, 2, 59)]
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(frechet.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T), expected, rtol=1e-6)


def test_feature_statistics_unbiased():
  x = np.random.default_rng(4).standard_normal((50, 3)).astype(np.float32)
  mu, sigma = frechet.feature_statistics(x)
  assert mu.dtype == np.float64 and sigma.shape == (3, 3)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mu, x64.mean(0))
  np.testing.assert_allclose(sigma, (x64 - x64.mean(0)).T @ (x64 - x64.mean(0)) / 49)
  with pytest.raises(ValueError):
    frechet.feature_statistics(x[:1])


# ------------------------------------------------------------------------------------------ digits metric.


@pytest.fixture(scope="session")
def digits_metric():
  return dc.get_digits_metric()


@pytest.fixture(scope="session")
def digits():
  return load_digits(16)


def test_classifier_held_out_accuracy(digits_metric, digits):
  images, labels = digits
  _, test_idx = dc.split_indices(labels, digits_metric.config.test_fraction, digits_metric.config.seed)
  accuracy = np.mean(digits_metric.predict(images[test_idx]) == labels[test_idx])
  assert accuracy > 0.95
  np.testing.assert_allclose(accuracy, digits_metric.test_accuracy, atol=1e-6)


def test_features_shapes_and_batching(digits_metric, digits):
  images = digits[0][:700]
  feats = digits_metric.features(images)
  assert feats.shape == (700, digits_metric.config.feature_dim) and feats.dtype == np.float32
  # Padded fixed-size batches do not change the per-image result; [N, 16, 16] is accepted too.
  np.testing.assert_allclose(digits_metric.features(images[513:516, ..., 0]), feats[513:516], rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError):
    digits_metric.features(np.zeros((2, 8, 8, 1)))


def test_digits_fd_scale(digits_metric, digits):
  images, labels = digits
  rng = np.random.default_rng(0)
  half = images[rng.permutation(len(labels))[:899]]
  fd_real = digits_metric.digits_metrics(half)["digits_fd"]
  fd_noisy = digits_metric.digits_metrics(np.clip(half + 0.3 * rng.standard_normal(half.shape), -1, 1))
  fd_noise = digits_metric.digits_metrics(np.clip(rng.standard_normal(half.shape), -1, 1))["digits_fd"]
  assert 0 <= fd_real < 3.0
  assert fd_noisy["digits_fd"] > 3 * fd_real
  assert fd_noise > 100.0
  assert abs(digits_metric.digits_metrics(images)["digits_fd"]) < 1e-6  # the reference set itself
  # Quantising to 8 bits barely changes real images.
  assert abs(digits_metric.digits_metrics(half, quantize=True)["digits_fd"] - fd_real) < 0.5


def test_class_accuracy(digits_metric, digits):
  images, labels = digits
  out = digits_metric.digits_metrics(images, labels)
  assert out["class_accuracy"] > 0.97
  assert out["class_histogram_tv"] < 0.02
  shuffled = np.random.default_rng(1).permutation(labels)
  assert 0.05 < digits_metric.digits_metrics(images, shuffled)["class_accuracy"] < 0.16
  zeros = images[labels == 0]
  assert digits_metric.digits_metrics(zeros)["class_histogram_tv"] > 0.85


def test_module_level_digits_metrics(digits_metric, digits):
  images, labels = digits
  out = dc.digits_metrics(images[:100], labels[:100])
  assert set(out) == {"digits_fd", "class_accuracy", "class_histogram_tv"}
  assert dc.get_digits_metric() is digits_metric


_TINY = dc.TrainConfig(widths=(4, 4, 4), feature_dim=8, epochs=1, batch_size=256, max_shift=0)


def test_cache_path_depends_on_config_and_version(monkeypatch, tmp_path):
  monkeypatch.setenv(dc.CACHE_ENV, str(tmp_path))
  p = dc.cache_path(_TINY)
  assert p.parent == tmp_path and f"_v{dc.VERSION}_" in p.name
  assert dc.cache_path(dc.TrainConfig(epochs=21)) != dc.cache_path(dc.TrainConfig())
  monkeypatch.setattr(dc, "VERSION", dc.VERSION + 1)
  assert dc.cache_path(_TINY) != p


_CONCURRENT_CODE = """
import json, os, sys, time
import numpy as np
from gendistill.evaluation import digits_classifier as dc
cfg = dc.TrainConfig(widths=(4, 4, 4), feature_dim=8, epochs=1, batch_size=256, max_shift=0)

def fake_train(config, verbose=False):  # slow enough for the other process to reach the lock meanwhile
  print("trained", flush=True)
  time.sleep(1.0)
  info = {"version": dc.VERSION, "config": json.loads(json.dumps(dc.dataclasses.asdict(config))),
          "pid": os.getpid()}
  return {"params": {"w": np.arange(1000.0) * os.getpid()}}, info

dc.train_classifier = fake_train
open(sys.argv[1], "w").close()  # ready
while len(os.listdir(os.path.dirname(sys.argv[1]))) < 2:  # start together
  time.sleep(0.01)
params, info = dc.load_or_train(cfg)
print(json.dumps({"info": info, "w0": float(params["params"]["w"][1])}))
"""


def test_cache_concurrent_processes_train_once(tmp_path):
  """Two processes start together on an empty cache: one trains, the other waits and reads its file."""
  cache, ready = tmp_path / "cache", tmp_path / "ready"
  ready.mkdir()
  env = dict(os.environ, **{dc.CACHE_ENV: str(cache)})
  procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_CODE, str(ready / str(i))], env=env,
                            stdout=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0].strip().splitlines() for p in procs]
  assert all(p.returncode == 0 for p in procs)
  assert sum(lines.count("trained") for lines in outs) == 1
  results = [json.loads(lines[-1]) for lines in outs]
  assert results[0] == results[1]  # both got the params of the one process that trained
  files = sorted(f.name for f in cache.iterdir())
  assert files == [dc.cache_path(_TINY).name, dc.cache_path(_TINY).name + ".lock"]


def test_cache_reuse_and_corrupt_file(monkeypatch, tmp_path):
  monkeypatch.setenv(dc.CACHE_ENV, str(tmp_path))
  path = dc.cache_path(_TINY)
  path.write_bytes(b"not an npz file")
  with pytest.warns(RuntimeWarning, match="ignoring unreadable"):
    params, info = dc.load_or_train(_TINY)
  params2, info2 = dc.load_or_train(_TINY)  # now read from the file
  assert info2 == info
  for a, b in zip(dc.jax.tree.leaves(params), dc.jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)
  metric = dc.DigitsMetric(_TINY, params=params2, info=info2)
  assert metric.features(np.zeros((3, 16, 16, 1))).shape == (3, 8)


# ---------------------------------------------------------------------------------------------- toy 2-D.


def _ring(n, rng, k=8, radius=2.0, std=0.1, drop=()):
  angles = 2 * np.pi * np.arange(k) / k
  means = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
  keep = np.array([i for i in range(k) if i not in drop])
  comp = rng.choice(keep, size=n)
  return means[comp] + std * rng.standard_normal((n, 2)), (np.full(k, 1 / k), means,
                                                            np.tile(std ** 2 * np.eye(2), (k, 1, 1)))


def test_toy_metrics_same_vs_shifted():
  rng = np.random.default_rng(0)
  ref, mixture = _ring(1000, rng)
  same, _ = _ring(1000, rng)
  shifted = same + np.array([1.0, 0.0])
  m_same = toy_metrics(same, ref, mixture, per_mode=True)
  m_shift = toy_metrics(shifted, ref, mixture)
  assert all(np.ndim(v) == 0 for v in m_shift.values())  # per_mode=False: scalars only, for metric writers
  assert abs(m_same["mmd2"]) < 2e-3 and m_shift["mmd2"] > 0.02
  assert abs(m_same["energy_distance"]) < 0.01 and m_shift["energy_distance"] > 0.2
  # SW_2 of two samples of the ring is ~0.15-0.25 at N = 1000 (the mode counts fluctuate and the modes are
  # far apart); shifted by 1 it is ~0.8.
  assert m_same["sliced_wasserstein"] < 0.3 and m_shift["sliced_wasserstein"] > 0.6
  assert m_same["num_modes_covered"] == 8 and m_same["high_quality_fraction"] > 0.97
  assert m_same["mode_weights_tv"] < 0.08
  np.testing.assert_allclose(m_same["mode_weights_true"], np.full(8, 1 / 8))
  assert m_shift["high_quality_fraction"] < 0.05  # 10 standard deviations off every mode


def test_mode_coverage_counts_dropped_mode():
  rng = np.random.default_rng(1)
  ref, mixture = _ring(1000, rng)
  dropped, _ = _ring(1000, rng, drop=(3,))
  out = toy_metrics(dropped, ref, mixture, per_mode=True)
  assert out["num_modes"] == 8 and out["num_modes_covered"] == 7 and out["mode_weight_ratio_min"] == 0
  assert not out["modes_covered"][3] and out["mode_weights"][3] == 0
  np.testing.assert_allclose(out["mode_weights_tv"], 1 / 8, atol=0.04)
  # A mode that gets only far-away (low-quality) samples is not covered either.
  junk = np.concatenate([dropped, mixture[1][3] + np.array([[0.6, 0.0]] * 300)])
  assert mixture_metrics(junk, *mixture)["num_modes_covered"] == 7


def test_toy_estimators_match_brute_force():
  rng = np.random.default_rng(2)
  x, y = rng.standard_normal((60, 2)), rng.standard_normal((45, 2)) + 0.5
  dxx = np.linalg.norm(x[:, None] - x[None], axis=-1)
  dyy = np.linalg.norm(y[:, None] - y[None], axis=-1)
  dxy = np.linalg.norm(x[:, None] - y[None], axis=-1)
  off = lambda m: (m.sum() - np.trace(m)) / (m.shape[0] * (m.shape[0] - 1))
  np.testing.assert_allclose(energy_distance(x, y), 2 * dxy.mean() - off(dxx) - off(dyy), rtol=1e-8)
  h = np.array([0.5, 2.0])
  k = lambda d: np.mean([np.exp(-d ** 2 / (2 * b ** 2)) for b in h], axis=0)
  np.testing.assert_allclose(mmd2(x, y, bandwidths=h), off(k(dxx)) + off(k(dyy)) - 2 * k(dxy).mean(),
                             rtol=1e-8)
  # Sliced Wasserstein in 1-D is the 1-D Wasserstein distance (every direction is +-1), also for N != M.
  a, b = rng.standard_normal(101), rng.exponential(size=37)
  np.testing.assert_allclose(sliced_wasserstein(a[:, None], b[:, None], num_projections=3, p=1),
                             scipy.stats.wasserstein_distance(a, b), rtol=1e-10)
  # Seeded: the same call gives the same value.
  assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)


# ------------------------------------------------------------------------------------------------ grids.


def test_to_uint8_matches_edm():
  x = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(grid.to_uint8(x), [0, 0, 64, 128, 191, 255, 255])
  v = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
  np.testing.assert_array_equal(grid.to_uint8(v), np.round(v * 127.5 + 127.5).astype(np.uint8))


def test_image_grid_png_round_trip(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (5, 4, 6, 1)).astype(np.float32)
  path = tmp_path / "sub" / "gray.png"
  returned = grid.save_image_grid(images, path, ncols=3, scale=1, padding=0)
  with Image.open(path) as im:
    assert im.mode == "L"
    pixels = np.asarray(im)
  assert pixels.shape == (8, 18)
  np.testing.assert_array_equal(pixels, returned[..., 0])
  q = grid.to_uint8(images[..., 0])
  np.testing.assert_array_equal(pixels[0:4, 0:6], q[0])
  np.testing.assert_array_equal(pixels[4:8, 6:12], q[4])
  assert np.all(pixels[4:8, 12:18] == 0)  # the unused slot

  rgb = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
  path = tmp_path / "rgb.png"
  grid.save_image_grid(rgb, path, scale=2, padding=1)
  with Image.open(path) as im:
    assert im.mode == "RGB"
    pixels = np.asarray(im)
  assert pixels.shape == (2 * 7 + 1, 2 * 7 + 1, 3)
  np.testing.assert_array_equal(pixels[1:7, 8:14], grid.to_uint8(rgb[1]).repeat(2, 0).repeat(2, 1))
  assert np.all(pixels[0] == 255) and np.all(pixels[:, 7] == 255)


def test_image_grid_auto_upscales_digits(tmp_path):
  from PIL import Image
  images = load_digits(16)[0][:10]
  grid.save_image_grid(images, tmp_path / "digits.png")
  with Image.open(tmp_path / "digits.png") as im:
    # 16x16 tiles enlarged 4x, ceil(sqrt(10)) = 4 columns, 2 white pixels between and around the tiles.
    assert im.size == (4 * 66 + 2, 3 * 66 + 2)
    pixels = np.asarray(im)
  assert np.all(pixels[:, 66:68] == 255) and np.all(pixels[66:68] == 255)
  np.testing.assert_array_equal(pixels[2:66, 2:66], grid.to_uint8(images[0, ..., 0]).repeat(4, 0).repeat(4, 1))


def test_save_scatter(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  path = tmp_path / "scatter.png"
  grid.save_scatter(rng.standard_normal((500, 2)), path, reference=rng.standard_normal((500, 2)), title="t")
  with Image.open(path) as im:
    assert im.size[0] > 100 and im.size[1] > 100
  grid.save_scatter(rng.standard_normal((10, 2)), tmp_path / "plain.png", lim=3)
  assert (tmp_path / "plain.png").stat().st_size > 0


def test_thin_axis_width_is_the_spread_across_each_modes_narrowest_axis():
  rng = np.random.default_rng(3)
  angle = 0.6
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  stds = np.array([[0.05, 0.5], [0.2, 0.3]])            # mode 0 thin along its rotated first axis
  means = np.array([[0.0, 0.0], [3.0, 0.0]])
  covs = np.stack([rot @ np.diag(s ** 2) @ rot.T for s in stds])
  widen = np.array([[2.0, 1.0], [1.0, 1.0]])            # mode 0 twice too wide across its thin axis only
  samples = np.concatenate([m + (rng.standard_normal((4000, 2)) * s * w) @ rot.T
                            for m, s, w in zip(means, stds, widen)])
  width = mixture_metrics(samples, [0.5, 0.5], means, covs)["thin_axis_width"]
  np.testing.assert_allclose(width, [2.0, 1.0], rtol=0.05)
  exact = np.concatenate([m + (rng.standard_normal((4000, 2)) * s) @ rot.T for m, s in zip(means, stds)])
  np.testing.assert_allclose(mixture_metrics(exact, [0.5, 0.5], means, covs)["thin_axis_width"], 1.0, rtol=0.05)
  assert "thin_axis_width" not in toy_metrics(exact, exact, (np.array([0.5, 0.5]), means, covs))   # scalars only
