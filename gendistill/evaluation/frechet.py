"""Frechet distance between two Gaussians given by their feature statistics (the core of FID and digits FD).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

Computed as EDM's `fid.py` and pytorch-fid do: float64 throughout, `scipy.linalg.sqrtm` of the product
sigma1 @ sigma2, and the real part of the result. Statistics use the unbiased covariance
(`np.cov(rowvar=False)`), as both of them do.

When either covariance is singular (fewer samples than feature dimensions: rank <= N - 1), scipy's square root
of the product is slow and unreliable, so the trace of the square root is taken by a symmetric route instead:
with sigma1 = R R^T, the nonzero eigenvalues of sigma1 sigma2 are those of the positive semi-definite R^T sigma2 R,
so Tr (sigma1 sigma2)^(1/2) is the sum of the square roots of that matrix's eigenvalues, exact for singular
covariances too (and small: R has as many columns as sigma1's rank). The same route, with a warning, replaces
scipy's result when that fails (non-finite entries) or is inaccurate (relative residual ||X X - A||_F / ||A||_F
above `rtol`). A large imaginary part of scipy's square root (pytorch-fid raises on it) is reported by a warning;
the real part is used, as EDM does.
"""
import warnings

import numpy as np
import scipy.linalg


def feature_statistics(features):
  """Returns (mu [D], sigma [D, D]) in float64 of features [N, D]; sigma is the unbiased covariance (N - 1)."""
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {features.shape}")
  if features.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
  mu = features.mean(axis=0)
  sigma = np.cov(features, rowvar=False)
  return mu, np.atleast_2d(sigma)


def _sqrtm_with_error(a):
  root = scipy.linalg.sqrtm(a)
  if not np.all(np.isfinite(root)):
    return root, np.inf
  norm = np.linalg.norm(a, "fro")
  residual = np.linalg.norm(root @ root - a, "fro")
  return root, residual / norm if norm > 0 else residual


def _positive_definite(a) -> bool:
  try:
    np.linalg.cholesky(a)
    return True
  except np.linalg.LinAlgError:
    return False


def _trace_sqrt_product(sigma1, sigma2) -> float:
  """Tr (sigma1 sigma2)^(1/2) for symmetric positive semi-definite sigma1, sigma2, singular ones included.

  With sigma1 = R R^T (R = V sqrt(w) over the numerical range of sigma1, rank r), sigma1 sigma2 has the nonzero
  eigenvalues of the r x r matrix R^T sigma2 R, which is positive semi-definite: one D x D eigendecomposition,
  the rest r x r. Put the lower-rank covariance first.
  """
  w, v = np.linalg.eigh(sigma1)
  keep = w > max(w.max(), 0.0) * w.shape[0] * np.finfo(np.float64).eps   # np.linalg.matrix_rank's tolerance
  root = v[:, keep] * np.sqrt(w[keep])
  m = root.T @ sigma2 @ root
  return float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, rtol=1e-3):
  """Frechet distance (squared, as FID reports it) between N(mu1, sigma1) and N(mu2, sigma2), as a float.

  Args:
    mu1, mu2: means [D].
    sigma1, sigma2: covariances [D, D] (symmetric positive semi-definite).
    rtol: the relative residual of scipy's square root above which the symmetric route replaces it.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
  if mu1.shape != mu2.shape or mu1.ndim != 1:
    raise ValueError(f"means have different or non-vector shapes: {mu1.shape} vs {mu2.shape}")
  d = mu1.shape[0]
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")
  if not (np.all(np.isfinite(sigma1)) and np.all(np.isfinite(sigma2))):
    raise FloatingPointError("Frechet distance: a covariance has non-finite entries")

  diff = mu1 - mu2
  trace_covmean = None
  definite1, definite2 = _positive_definite(sigma1), _positive_definite(sigma2)
  if definite1 and definite2:
    covmean, err = _sqrtm_with_error(sigma1 @ sigma2)   # EDM's and pytorch-fid's computation
    if err <= rtol:
      if np.iscomplexobj(covmean):
        max_imag = np.max(np.abs(np.diagonal(covmean).imag))
        if max_imag > 1e-3:
          warnings.warn(f"Frechet distance: sqrtm has a large imaginary component ({max_imag:.3g}); using the "
                        "real part.", RuntimeWarning, stacklevel=2)
        covmean = covmean.real
      trace_covmean = float(np.trace(covmean))
    else:
      warnings.warn(f"Frechet distance: sqrtm(sigma1 @ sigma2) is singular or inaccurate (relative residual "
                    f"{err:.3g}); using the symmetric eigenvalue route instead.", RuntimeWarning, stacklevel=2)
  if trace_covmean is None:   # Tr (S1 S2)^(1/2) = Tr (S2 S1)^(1/2): decompose a singular one
    trace_covmean = _trace_sqrt_product(*((sigma2, sigma1) if definite1 and not definite2 else (sigma1, sigma2)))
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def frechet_distance_from_features(features1, features2, **kwargs):
  """Frechet distance between the Gaussians fitted to two feature sets [N1, D] and [N2, D]."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), **kwargs)
