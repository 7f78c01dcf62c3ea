"""Sample-quality metrics for low-dimensional (toy2d) samples against reference samples or a Gaussian mixture.

All in numpy float64; inputs may be numpy or jax arrays of shape [N, D] (D = 2 for toy2d, any D works).

- `mmd2`: unbiased squared maximum mean discrepancy (Gretton et al. 2012, the U-statistic: diagonal terms
  left out) with a kernel that averages RBF kernels exp(-|x - y|^2 / (2 h^2)) over several bandwidths h. By
  default h = median pairwise distance of the reference times (0.2, 0.5, 1, 2, 5), so the scale follows the
  target, not the samples being judged. Unbiased, so it fluctuates around 0 (and can be slightly negative)
  when both sets come from the same distribution.
- `sliced_wasserstein`: SW_p (p = 2 by default) = (mean over fixed random unit directions theta of
  W_p^p(<theta, x>, <theta, y>))^(1/p), with the 1-D W_p of the empirical distributions computed exactly (also
  for different sample sizes). The directions come from `seed`, so repeated calls agree.
- `energy_distance`: 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo; the squared form, zero iff the
  distributions agree), with the within-set terms as U-statistics.
- With `mixture=(weights [K], means [K, D], covs [K, D, D])`: every sample is assigned to the component with
  the smallest Mahalanobis distance r_k(x) = sqrt((x - m_k)^T C_k^-1 (x - m_k)); a sample is *high quality* if
  min_k r_k(x) <= 3 (`quality_radius`; in 2-D a perfect sampler scores 1 - exp(-4.5) = 0.989); a component is
  *covered* if the high-quality samples assigned to it make up at least `coverage_threshold` (0.1) times its
  true weight of all samples. `mode_weights` is the fraction of all samples assigned to each component, to set
  against `mode_weights_true`; `mode_weights_tv` is their total-variation distance and `mode_weight_ratio_min`
  the smallest ratio of the two (0 when a mode is dropped, near 1 when all are balanced).

The pairwise metrics (MMD, energy) cost O(N M); sets larger than `max_pairwise` are subsampled (seeded) for
them. Sliced Wasserstein and the mixture metrics use every sample.
"""
import numpy as np

_BANDWIDTH_MULTIPLIERS = (0.2, 0.5, 1.0, 2.0, 5.0)
_BLOCK = 512


def _as_points(x, name):
  x = np.asarray(x, dtype=np.float64)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2:
    raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
  if x.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 points, got {x.shape[0]}")
  return x


def _sq_dists(a, b):
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def _pairwise_sum(a, b, fn, exclude_diagonal=False):
  """Sum of fn(squared distances) over all pairs (a_i, b_j), in row blocks; optionally without i == j."""
  total = 0.0
  for start in range(0, a.shape[0], _BLOCK):
    block = fn(_sq_dists(a[start:start + _BLOCK], b))
    if exclude_diagonal:
      rows = np.arange(block.shape[0])
      block[rows, rows + start] = 0.0
    total += block.sum()
  return total


def _subsample(x, max_points, rng):
  if max_points is None or x.shape[0] <= max_points:
    return x
  return x[np.sort(rng.choice(x.shape[0], size=max_points, replace=False))]


def median_distance(x, max_points=1000, seed=0):
  """Median pairwise Euclidean distance among (a seeded subset of at most `max_points` of) the points."""
  x = _subsample(_as_points(x, "x"), max_points, np.random.default_rng(seed))
  d = np.sqrt(_sq_dists(x, x))
  return float(np.median(d[np.triu_indices(x.shape[0], k=1)]))


def mmd2(x, y, bandwidths=None):
  """Unbiased squared MMD between samples x [N, D] and y [M, D] with a mixture-of-RBF kernel.

  `bandwidths`: the RBF length scales h; default: median pairwise distance of y times (0.2, 0.5, 1, 2, 5).
  """
  x, y = _as_points(x, "x"), _as_points(y, "y")
  if bandwidths is None:
    bandwidths = median_distance(y) * np.asarray(_BANDWIDTH_MULTIPLIERS)
  inv = 1.0 / (2.0 * np.square(np.asarray(bandwidths, dtype=np.float64)))

  def kernel(sq):
    out, tmp = np.zeros_like(sq), np.empty_like(sq)
    for c in inv:
      np.multiply(sq, -c, out=tmp)
      out += np.exp(tmp, out=tmp)
    out *= 1.0 / len(inv)
    return out

  n, m = x.shape[0], y.shape[0]
  kxx = _pairwise_sum(x, x, kernel, exclude_diagonal=True) / (n * (n - 1))
  kyy = _pairwise_sum(y, y, kernel, exclude_diagonal=True) / (m * (m - 1))
  kxy = _pairwise_sum(x, y, kernel) / (n * m)
  return float(kxx + kyy - 2.0 * kxy)


def energy_distance(x, y):
  """2 E|X - Y| - E|X - X'| - E|Y - Y'| (squared energy distance; within-set terms unbiased)."""
  x, y = _as_points(x, "x"), _as_points(y, "y")
  n, m = x.shape[0], y.shape[0]
  exy = _pairwise_sum(x, y, np.sqrt) / (n * m)
  exx = _pairwise_sum(x, x, np.sqrt, exclude_diagonal=True) / (n * (n - 1))
  eyy = _pairwise_sum(y, y, np.sqrt, exclude_diagonal=True) / (m * (m - 1))
  return float(2.0 * exy - exx - eyy)


def _wasserstein_1d_pp(u, v, p):
  """W_p^p between the empirical distributions of the rows of u [P, N] and v [P, M] (one per projection)."""
  u, v = np.sort(u, axis=1), np.sort(v, axis=1)
  n, m = u.shape[1], v.shape[1]
  if n == m:
    return np.mean(np.abs(u - v) ** p, axis=1)
  # Quantile functions are piecewise constant with breaks at i/n and j/m: integrate over the merged pieces.
  levels = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
  widths = np.diff(levels, prepend=0.0)
  mids = levels - widths / 2
  iu = np.minimum((mids * n).astype(np.int64), n - 1)
  iv = np.minimum((mids * m).astype(np.int64), m - 1)
  return np.sum(widths * np.abs(u[:, iu] - v[:, iv]) ** p, axis=1)


def sliced_wasserstein(x, y, num_projections=256, p=2, seed=0):
  """Sliced p-Wasserstein distance over `num_projections` directions drawn uniformly from the sphere (seeded)."""
  x, y = _as_points(x, "x"), _as_points(y, "y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
  theta = np.random.default_rng(seed).standard_normal((num_projections, x.shape[1]))
  theta /= np.linalg.norm(theta, axis=1, keepdims=True)
  wpp = _wasserstein_1d_pp(theta @ x.T, theta @ y.T, p)
  return float(np.mean(wpp) ** (1.0 / p))


def mahalanobis_distances(x, means, covs):
  """r [N, K]: Mahalanobis distance of each point to each component."""
  x = _as_points(x, "x")
  means = np.asarray(means, dtype=np.float64)
  covs = np.asarray(covs, dtype=np.float64)
  out = np.empty((x.shape[0], means.shape[0]))
  for k in range(means.shape[0]):
    chol = np.linalg.cholesky(covs[k])
    z = np.linalg.solve(chol, (x - means[k]).T)  # triangular, small D: a general solve is fine
    out[:, k] = np.sqrt(np.sum(z * z, axis=0))
  return out


def mixture_metrics(samples, weights, means, covs, quality_radius=3.0, coverage_threshold=0.1):
  """Mode coverage, high-quality fraction and per-mode weights of samples against a Gaussian mixture."""
  weights = np.asarray(weights, dtype=np.float64)
  weights = weights / weights.sum()
  r = mahalanobis_distances(samples, means, covs)
  k = weights.shape[0]
  nearest = np.argmin(r, axis=1)
  good = r[np.arange(r.shape[0]), nearest] <= quality_radius
  n = r.shape[0]
  mode_weights = np.bincount(nearest, minlength=k) / n
  good_weights = np.bincount(nearest[good], minlength=k) / n
  covered = good_weights >= coverage_threshold * weights
  thin = thin_axis_widths(samples, nearest, r[np.arange(n), nearest], means, covs)
  return {
      "num_modes": int(k),
      "num_modes_covered": int(covered.sum()),
      "modes_covered": covered,
      "high_quality_fraction": float(good.mean()),
      "mode_weights": mode_weights,
      "mode_weights_true": weights,
      "mode_weights_tv": float(0.5 * np.abs(mode_weights - weights).sum()),
      "mode_weight_ratio_min": float(np.min(mode_weights / weights)),
      "thin_axis_width": thin,
  }


def thin_axis_widths(samples, nearest, distance, means, covs, window=6.0, min_count=20):
  """[K]: per component, the std of its samples along the component's narrowest axis over the true std there
  (1 for a perfect mode, 2: twice too wide across it; nan with fewer than `min_count` samples). Its samples: the
  points nearest to it within `window` Mahalanobis units, so that points between modes do not set the width
  (the true value of a Gaussian truncated at 6 units is 1.000)."""
  x = _as_points(samples, "samples")
  out = np.full(len(means), np.nan)
  for k, (mean, cov) in enumerate(zip(np.asarray(means, np.float64), np.asarray(covs, np.float64))):
    mine = (nearest == k) & (distance <= window)
    if mine.sum() >= min_count:
      values, vectors = np.linalg.eigh(cov)
      out[k] = np.std((x[mine] - mean) @ vectors[:, 0]) / np.sqrt(values[0])
  return out


def toy_metrics(samples, reference, mixture=None, *, num_projections=256, max_pairwise=5000, seed=0,
                quality_radius=3.0, coverage_threshold=0.1, per_mode=False):
  """All toy metrics of `samples` [N, D] against `reference` [M, D] (and a Gaussian mixture if given).

  Args:
    samples: generated points [N, D].
    reference: points from the target [M, D].
    mixture: optional (weights [K], means [K, D], covs [K, D, D]) of the target (a tuple or NamedTuple such as
      data.toy2d.GaussianMixture), or a dict with those keys.
    num_projections: directions for the sliced Wasserstein distance.
    max_pairwise: sets larger than this are subsampled (seeded) for MMD and energy distance; None: never.
    seed: for the projections and the subsampling.
    per_mode: also return the per-component arrays (modes_covered [K] bool, mode_weights [K],
      mode_weights_true [K], thin_axis_width [K]); off by default so that every value is a scalar a metrics
      writer can float().
  Returns:
    a dict of floats/ints: mmd2, sliced_wasserstein, energy_distance, and with a mixture num_modes,
    num_modes_covered, high_quality_fraction, mode_weights_tv, mode_weight_ratio_min (min_k of sample weight /
    true weight: 0 if a mode is dropped); with per_mode also thin_axis_width [K] (each mode's width across its
    narrowest axis as a multiple of the true width; see thin_axis_widths).
  """
  x, y = _as_points(samples, "samples"), _as_points(reference, "reference")
  rng = np.random.default_rng(seed)
  xs, ys = _subsample(x, max_pairwise, rng), _subsample(y, max_pairwise, rng)
  out = {
      "mmd2": mmd2(xs, ys),
      "sliced_wasserstein": sliced_wasserstein(x, y, num_projections=num_projections, seed=seed),
      "energy_distance": energy_distance(xs, ys),
  }
  if mixture is not None:
    if isinstance(mixture, dict):
      mixture = (mixture["weights"], mixture["means"], mixture["covs"])
    weights, means, covs = mixture
    modes = mixture_metrics(x, weights, means, covs, quality_radius=quality_radius,
                            coverage_threshold=coverage_threshold)
    if not per_mode:
      modes = {k: v for k, v in modes.items() if np.ndim(v) == 0}
    out.update(modes)
  return out
