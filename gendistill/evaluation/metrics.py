"""FID, KID, Inception Score and precision/recall on feature arrays; reference statistics files.

All functions take numpy feature arrays ([N, D] pool features, [N, 1008] logits) from any extractor
(`inception.InceptionFeatures`) and compute in float64 on the host. Conventions follow the references:

  FID  EDM / pytorch-fid: unbiased covariance, scipy sqrtm, real part (`frechet.frechet_distance`).
       Below D + 1 samples the covariance is rank-deficient (rank <= N - 1 < D): the value is then dominated
       by the few-sample bias and FIDs at different N are not comparable; a RankDeficientCovarianceWarning says so.
  KID  torch-fidelity: polynomial kernel (x.y / D + 1)^3, unbiased MMD^2 per subset, 100 subsets of 1000
       (drawn f1 then f2 with RandomState(2020), without replacement); returns (mean, std over subsets).
  IS   the original TF code (Salimans et al.): softmax of the logits WITHOUT the fc bias over all 1008 classes,
       10 contiguous splits, exp(mean KL(p(y|x) || p(y))); returns (mean, std over splits).
  P/R  Kynkaanniemi et al. 2019 as NVIDIA's code: a sample is inside a manifold if its distance to some manifold
       point is <= that point's distance to its k-th nearest other manifold point (k = 3). NVIDIA computes
       distances in float16 on GPU; here in float64 (float32 optional), so rare near-ties can differ.

Reference statistics are .npz files with `mu` and `sigma` (EDM's and pytorch-fid's format); we may add
`num_samples`, which readers of those formats ignore.
"""
from __future__ import annotations

import warnings

import numpy as np

from gendistill import paths

from gendistill.evaluation.frechet import feature_statistics, frechet_distance


class RankDeficientCovarianceWarning(UserWarning):
  """Fewer samples than feature dimensions + 1: the covariance (and so the FID) is rank-deficient and biased."""


def _warn_rank(num_samples: int, dim: int, stacklevel: int = 3) -> None:
  if num_samples <= dim:
    warnings.warn(
        f"covariance of {num_samples} samples of {dim}-d features is rank-deficient (rank <= {num_samples - 1} "
        f"< {dim}): FID is biased upward and not comparable across sample counts; use >= {dim + 1} samples "
        "(50k for published numbers)", RankDeficientCovarianceWarning, stacklevel=stacklevel)


def _as_2d(features, name="features") -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f"{name} must be [N, D], got shape {features.shape}")
  return features


# ---------------------------------------------------------------------------------------------------- FID.


def compute_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """[N, D] features -> (mu [D], sigma [D, D]) in float64, unbiased covariance; warns if rank-deficient."""
  features = _as_2d(features)
  _warn_rank(*features.shape)
  return feature_statistics(features)


class StatsAccumulator:
  """Streaming mean and unbiased covariance (float64 sums, as EDM) for any number of samples.

    acc = StatsAccumulator(); for batch in ...: acc.update(pool); mu, sigma = acc.stats()
  """

  def __init__(self, dim: int | None = None):
    self.dim = dim
    self.num_samples = 0
    self._sum = None if dim is None else np.zeros(dim)
    self._outer = None if dim is None else np.zeros((dim, dim))

  def update(self, features) -> None:
    features = _as_2d(features)
    if self._sum is None:
      self.dim = features.shape[1]
      self._sum, self._outer = np.zeros(self.dim), np.zeros((self.dim, self.dim))
    if features.shape[1] != self.dim:
      raise ValueError(f"feature dim {features.shape[1]} != {self.dim}")
    self.num_samples += features.shape[0]
    self._sum += features.sum(axis=0)
    self._outer += features.T @ features

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    n = self.num_samples
    if n < 2:
      raise ValueError(f"need at least 2 samples for a covariance, have {n}")
    _warn_rank(n, self.dim)
    mu = self._sum / n
    sigma = (self._outer - n * np.outer(mu, mu)) / (n - 1)
    return mu, (sigma + sigma.T) / 2


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
  """FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64, real part of scipy's sqrtm (as EDM)."""
  return float(frechet_distance(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                                np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)))


def fid_from_features(features1, features2) -> float:
  return fid_from_stats(*compute_stats(features1), *compute_stats(features2))


def save_stats(path: str, mu, sigma, num_samples: int | None = None) -> None:
  """Write reference statistics as EDM does (np.savez with float64 `mu`, `sigma`), plus `num_samples`."""
  extra = {} if num_samples is None else {"num_samples": np.int64(num_samples)}
  paths.save_npz(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)


def load_stats(path: str) -> dict[str, np.ndarray]:
  """Read an .npz with `mu` and `sigma` (EDM's reference files, pytorch-fid's, ours) -> dict (float64)."""
  with paths.open_file(path, "rb") as f, np.load(f) as data:
    missing = {"mu", "sigma"} - set(data.files)
    if missing:
      raise KeyError(f"{path}: reference statistics need keys mu and sigma; missing {sorted(missing)}")
    out = {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64)}
    if "num_samples" in data.files:
      out["num_samples"] = int(data["num_samples"])
  if out["mu"].ndim != 1 or out["sigma"].shape != (out["mu"].shape[0],) * 2:
    raise ValueError(f"{path}: mu {out['mu'].shape} and sigma {out['sigma'].shape} do not match")
  if "num_samples" in out:
    _warn_rank(out["num_samples"], out["mu"].shape[0])
  return out


# ---------------------------------------------------------------------------------------------------- KID.


def polynomial_kernel(x, y, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx, k_xy, k_yy) -> float:
  """Unbiased MMD^2: off-diagonal means of K_xx and K_yy minus twice the full mean of K_xy."""
  m = k_xx.shape[0]
  n = k_yy.shape[0]
  sum_xx = k_xx.sum() - np.trace(k_xx)
  sum_yy = k_yy.sum() - np.trace(k_yy)
  return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * k_xy.sum() / (m * n))


def kid(features1, features2, num_subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 2020) -> tuple[float, float]:
  """Kernel Inception Distance (Binkowski et al.) as torch-fidelity: (mean, std) of unbiased MMD^2 over subsets.

  With fewer samples than `subset_size` the subsets shrink to min(N1, N2) (with a warning; torch-fidelity
  refuses, clean-fid shrinks silently).
  """
  f1, f2 = _as_2d(features1, "features1"), _as_2d(features2, "features2")
  if f1.shape[1] != f2.shape[1]:
    raise ValueError(f"feature dims differ: {f1.shape[1]} vs {f2.shape[1]}")
  m = min(subset_size, len(f1), len(f2))
  if m < subset_size:
    warnings.warn(f"KID subset size reduced from {subset_size} to {m} (only {len(f1)} and {len(f2)} samples)",
                  stacklevel=2)
  if m < 2:
    raise ValueError("KID needs at least 2 samples per set")
  rng = np.random.RandomState(seed)
  mmds = np.empty(num_subsets)
  for i in range(num_subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    kern = lambda a, b: polynomial_kernel(a, b, degree, gamma, coef0)  # noqa: E731
    mmds[i] = mmd2_unbiased(kern(x, x), kern(x, y), kern(y, y))
  return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------------------------------- IS.


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))) per contiguous split -> (mean, std). Pass logits without the fc bias."""
  logits = _as_2d(logits, "logits")
  logp = logits - logits.max(axis=1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
  n = len(logp)
  if n < splits:
    raise ValueError(f"{n} samples for {splits} splits")
  scores = []
  for k in range(splits):
    part = logp[k * n // splits:(k + 1) * n // splits]
    p = np.exp(part)
    log_py = np.log(p.mean(axis=0, keepdims=True))
    scores.append(np.exp(np.mean(np.sum(p * (part - log_py), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------- precision/recall.


def _sq_dists(a, b):
  d = (a * a).sum(1)[:, None] - 2 * (a @ b.T) + (b * b).sum(1)[None, :]
  return np.maximum(d, 0)


def manifold_radii(features, k: int = 3, batch_size: int = 1024, dtype=np.float64) -> np.ndarray:
  """Distance of each point to its k-th nearest other point of the same set (self excluded), [N]."""
  f = np.asarray(features, dtype)
  if len(f) <= k:
    raise ValueError(f"need more than k={k} points, have {len(f)}")
  radii = np.empty(len(f), dtype)
  for s in range(0, len(f), batch_size):
    d = _sq_dists(f[s:s + batch_size], f)
    radii[s:s + batch_size] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)
  return np.sqrt(radii)


def in_manifold(probes, manifold, radii, batch_size: int = 1024, dtype=np.float64) -> np.ndarray:
  """[P] bool: probe within radii[j] of some manifold point j."""
  p, m = np.asarray(probes, dtype), np.asarray(manifold, dtype)
  r2 = np.asarray(radii, dtype) ** 2
  out = np.empty(len(p), bool)
  for s in range(0, len(p), batch_size):
    out[s:s + batch_size] = (_sq_dists(p[s:s + batch_size], m) <= r2[None, :]).any(axis=1)
  return out


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 1024,
                     dtype=np.float64) -> dict[str, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds; both in [0, 1]."""
  real, fake = _as_2d(real_features, "real_features"), _as_2d(fake_features, "fake_features")
  out = {}
  for name, manifold, probes in (("precision", real, fake), ("recall", fake, real)):
    radii = manifold_radii(manifold, k, batch_size, dtype)
    out[name] = float(in_manifold(probes, manifold, radii, batch_size, dtype).mean())
  return out


# ------------------------------------------------------------------------------------------------ together.


def compute_metrics(pool, logits=None, ref_stats: dict | None = None, ref_pool=None, *, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, is_splits: int = 10, pr_k: int = 3) -> dict[str, float]:
  """Every metric the inputs allow: fid (ref_stats or ref_pool), kid and precision/recall (ref_pool),
  inception_score (logits without the fc bias). Keys: fid, kid, kid_std, is, is_std, precision, recall."""
  out: dict[str, float] = {}
  if ref_stats is None and ref_pool is not None:
    mu, sigma = compute_stats(ref_pool)
    ref_stats = {"mu": mu, "sigma": sigma}
  if ref_stats is not None:
    out["fid"] = fid_from_stats(*compute_stats(pool), ref_stats["mu"], ref_stats["sigma"])
  if ref_pool is not None:
    out["kid"], out["kid_std"] = kid(pool, ref_pool, kid_subsets, kid_subset_size)
    out.update(precision_recall(ref_pool, pool, pr_k))
  if logits is not None:
    out["is"], out["is_std"] = inception_score(logits, is_splits)
  return out
