"""Frechet distance between two Gaussians given by their feature statistics (the core of FID and digits FD).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

Computed as EDM's `fid.py` and pytorch-fid do: float64 throughout, `scipy.linalg.sqrtm` of the product
sigma1 @ sigma2, and the real part of the result. Statistics use the unbiased covariance
(`np.cov(rowvar=False)`), as both of them do.

If the square root fails (non-finite entries) or is inaccurate (relative residual ||X X - A||_F / ||A||_F above
`rtol`), which happens when the product is singular or nearly so (e.g. fewer samples than feature dimensions),
`eps * I` is added to both covariances and the square root is recomputed, as pytorch-fid does; a warning says so.
A large imaginary part of the square root (pytorch-fid raises on it) is also reported by a warning; the real
part is used regardless, as EDM does.
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


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, rtol=1e-3):
  """Frechet distance (squared, as FID reports it) between N(mu1, sigma1) and N(mu2, sigma2), as a float.

  Args:
    mu1, mu2: means [D].
    sigma1, sigma2: covariances [D, D].
    eps: the diagonal offset added to both covariances when the square root of their product is not usable.
    rtol: the relative residual of the square root above which it counts as not usable.
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

  diff = mu1 - mu2
  covmean, err = _sqrtm_with_error(sigma1 @ sigma2)
  if not err <= rtol:
    warnings.warn(
        f"Frechet distance: sqrtm(sigma1 @ sigma2) is singular or inaccurate (relative residual {err:.3g}); "
        f"adding {eps:g} to the diagonal of both covariances.",
        RuntimeWarning, stacklevel=2)
    offset = np.eye(d) * eps
    covmean, err = _sqrtm_with_error((sigma1 + offset) @ (sigma2 + offset))
    if not np.isfinite(err):
      raise FloatingPointError("Frechet distance: sqrtm is not finite even with the diagonal offset")
  if np.iscomplexobj(covmean):
    max_imag = np.max(np.abs(np.diagonal(covmean).imag))
    if max_imag > 1e-3:
      warnings.warn(f"Frechet distance: sqrtm has a large imaginary component ({max_imag:.3g}); using the "
                    "real part.", RuntimeWarning, stacklevel=2)
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(features1, features2, **kwargs):
  """Frechet distance between the Gaussians fitted to two feature sets [N1, D] and [N2, D]."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), **kwargs)
