"""FID, KID, IS and precision/recall against independent computations (scipy/numpy loops, closed forms)."""
import warnings

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist
from scipy.special import softmax

from gendistill.evaluation import metrics


def _features(seed, n, d, shift=0.0, scale=1.0):
  rs = np.random.RandomState(seed)
  mix = rs.standard_normal((d, d)) / np.sqrt(d)
  return (rs.standard_normal((n, d)) @ mix) * scale + shift


def _scipy_fid(f1, f2):
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _psd_fid(mu1, s1, mu2, s2):
  """Tr (S1 S2)^(1/2) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))): a symmetric route, exact for singular S too."""
  w, v = np.linalg.eigh(s1)
  r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  ev = np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


# ---------------------------------------------------------------------------------------------------- FID.


def test_fid_matches_scipy_reference():
  f1, f2 = _features(0, 500, 16), _features(1, 400, 16, shift=0.3, scale=1.2)
  with warnings.catch_warnings():
    warnings.simplefilter("error", metrics.RankDeficientCovarianceWarning)  # 500 > 16 samples: no warning
    value = metrics.fid_from_features(f1, f2)
  np.testing.assert_allclose(value, _scipy_fid(f1, f2), rtol=1e-9)
  assert metrics.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)


def test_fid_closed_form_for_commuting_gaussians():
  rs = np.random.RandomState(3)
  a, b = rs.uniform(0.5, 2, 32), rs.uniform(0.5, 2, 32)
  mu1, mu2 = rs.standard_normal(32), rs.standard_normal(32)
  q, _ = np.linalg.qr(rs.standard_normal((32, 32)))  # same eigenbasis: S1 S2 commute
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
  np.testing.assert_allclose(metrics.fid_from_stats(mu1, s1, mu2, s2), expected, rtol=1e-9)


def test_rank_deficient_covariance_warns_and_still_matches():
  f1, f2 = _features(4, 12, 40), _features(5, 15, 40, shift=0.5)  # N <= D: rank <= N - 1 < D
  with pytest.warns(metrics.RankDeficientCovarianceWarning, match="rank-deficient"):
    mu1, s1 = metrics.compute_stats(f1)
  assert np.linalg.matrix_rank(s1) == 11
  with pytest.warns(metrics.RankDeficientCovarianceWarning):
    value = metrics.fid_from_features(f1, f2)
  mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
  np.testing.assert_allclose(value, _psd_fid(mu1, s1, mu2, s2), rtol=1e-6)
  assert np.isfinite(value) and value > 0


def test_stats_accumulator_matches_numpy_and_warns():
  f = _features(6, 301, 24, shift=3.0)  # a large mean stresses the streaming (sum of outer products) form
  acc = metrics.StatsAccumulator()
  for s in range(0, 301, 64):
    acc.update(f[s:s + 64])
  mu, sigma = acc.stats()
  assert acc.num_samples == 301
  np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)
  mu2, sigma2 = metrics.compute_stats(f)
  np.testing.assert_allclose(sigma, sigma2, rtol=1e-9, atol=1e-12)
  small = metrics.StatsAccumulator(24)
  small.update(f[:10])
  with pytest.warns(metrics.RankDeficientCovarianceWarning):
    small.stats()


def test_stats_files_roundtrip_and_edm_format(tmp_path):
  f = _features(7, 100, 8)
  mu, sigma = metrics.compute_stats(f)
  path = str(tmp_path / "ref.npz")
  metrics.save_stats(path, mu, sigma, num_samples=100)
  ref = metrics.load_stats(path)
  np.testing.assert_array_equal(ref["mu"], mu)
  np.testing.assert_array_equal(ref["sigma"], sigma)
  assert ref["num_samples"] == 100 and ref["mu"].dtype == np.float64
  with np.load(path) as raw:
    assert {"mu", "sigma"} <= set(raw.files)  # what EDM's fid.py reads
  edm = str(tmp_path / "edm.npz")  # EDM writes exactly these two keys
  np.savez(edm, mu=mu.astype(np.float32), sigma=sigma)
  assert metrics.load_stats(edm).keys() == {"mu", "sigma"}
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, m=mu)
  with pytest.raises(KeyError, match="mu and sigma"):
    metrics.load_stats(bad)


# ---------------------------------------------------------------------------------------------------- KID.


def _loop_kid(f1, f2, num_subsets, m, seed):
  """Pairwise loops over the same subsets as torch-fidelity draws them (RandomState(seed): f1, then f2)."""
  rng = np.random.RandomState(seed)
  d = f1.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
  vals = []
  for _ in range(num_subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    vals.append(xx + yy - 2 * xy)
  return float(np.mean(vals)), float(np.std(vals))


def test_kid_matches_pairwise_loops():
  f1, f2 = _features(8, 60, 6), _features(9, 50, 6, shift=0.4)
  mean, std = metrics.kid(f1, f2, num_subsets=5, subset_size=25, seed=2020)
  ref_mean, ref_std = _loop_kid(f1, f2, 5, 25, 2020)
  np.testing.assert_allclose([mean, std], [ref_mean, ref_std], rtol=1e-10)
  assert mean > 0


def test_kid_matches_sklearn_kernel_and_is_unbiased():
  from sklearn.metrics.pairwise import polynomial_kernel
  f1, f2 = _features(10, 40, 12), _features(11, 40, 12)
  k = lambda a, b: polynomial_kernel(a, b, degree=3, gamma=1 / 12, coef0=1)  # noqa: E731
  expected = metrics.mmd2_unbiased(k(f1, f1), k(f1, f2), k(f2, f2))
  mean, std = metrics.kid(f1, f2, num_subsets=1, subset_size=40)
  assert mean == pytest.approx(expected, rel=1e-12) and std == 0.0
  # Same distribution: the unbiased estimate averages to ~0 over many draws (not a positive bias like FID's).
  rs = np.random.RandomState(0)
  draws = [metrics.kid(rs.standard_normal((30, 12)), rs.standard_normal((30, 12)), num_subsets=1,
                       subset_size=30)[0] for _ in range(40)]
  assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws))


def test_kid_shrinks_subsets_with_a_warning():
  f1, f2 = _features(12, 20, 4), _features(13, 30, 4)
  with pytest.warns(UserWarning, match="reduced from 1000 to 20"):
    metrics.kid(f1, f2, num_subsets=2)


# ----------------------------------------------------------------------------------------------------- IS.


def _original_is(logits, splits):
  """The original TF inception_score.py on softmax outputs (np.log of probabilities, contiguous splits)."""
  preds = softmax(logits.astype(np.float64), axis=1)
  scores = []
  for i in range(splits):
    part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_matches_original_and_limits():
  logits = np.random.RandomState(14).standard_normal((103, 1008)) * 3
  np.testing.assert_allclose(metrics.inception_score(logits, splits=10), _original_is(logits, 10), rtol=1e-10)
  assert metrics.inception_score(np.zeros((50, 1008)), splits=5) == pytest.approx((1.0, 0.0))
  confident = 60.0 * np.eye(1008)[np.tile(np.arange(10), 10)]  # each split holds 10 sure, distinct classes
  mean, std = metrics.inception_score(confident, splits=10)
  assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6


# ------------------------------------------------------------------------------------------ precision/recall.


def _loop_pr(real, fake, k):
  def inside(probes, manifold):
    dm = cdist(manifold, manifold)
    radii = np.sort(dm, axis=1)[:, k]  # column 0 is the point itself
    return np.mean([np.any(cdist(p[None], manifold)[0] <= radii) for p in probes])
  return {"precision": inside(fake, real), "recall": inside(real, fake)}


def test_precision_recall_matches_cdist_reference():
  real = _features(15, 120, 8)
  fake = _features(16, 90, 8, shift=0.6, scale=0.7)  # narrower and shifted: precision and recall both < 1
  out = metrics.precision_recall(real, fake, k=3, batch_size=32)
  ref = _loop_pr(real, fake, 3)
  assert out == pytest.approx(ref, abs=1e-12)
  assert 0 < out["precision"] < 1 and 0 < out["recall"] < 1
  assert metrics.precision_recall(real, real, k=3) == {"precision": 1.0, "recall": 1.0}
  far = metrics.precision_recall(real, real + 100.0, k=3)
  assert far == {"precision": 0.0, "recall": 0.0}
  f32 = metrics.precision_recall(real, fake, k=3, dtype=np.float32)
  assert f32 == pytest.approx(ref, abs=0.02)


def test_compute_metrics_keys():
  real, fake = _features(17, 60, 8), _features(18, 50, 8, shift=0.2)
  logits = np.random.RandomState(19).standard_normal((50, 1008))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = metrics.compute_metrics(fake, logits, ref_pool=real, kid_subsets=3, kid_subset_size=20, is_splits=5)
  assert set(out) == {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall"}
  assert out["fid"] == pytest.approx(metrics.fid_from_features(fake, real), rel=1e-9)
