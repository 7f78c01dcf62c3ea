"""FID's few-sample bias: FID at N = 1k, 5k, 10k between two fixed 2048-d Gaussians with a known true FID.

The two distributions share an eigenbasis (a fixed random rotation U), so the population FID has a closed form:
  P = N(0, U diag(a) U^T),  Q = N(delta, U diag(b) U^T),  FID(P, Q) = |delta|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
The spectra decay like Inception pool features' (a_i = 2 / (1 + i / 40)). For each N, both feature sets have N
samples; the FID is computed exactly as for images (metrics.compute_stats + fid_from_stats: float64, unbiased
covariance, scipy sqrtm, real part). A second row pair uses P against P (true FID 0): pure bias. FID_inf is the
least-squares line FID_N = FID_inf + k / N (Chong & Forsyth 2020) through the N > D (full-rank covariances).

  python experiments/fid_bias.py [--trials 3] [--dim 2048] [--sizes 1000 5000 10000]
Writes the markdown table to stdout (pasted into experiments/fid_bias.md).
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gendistill.evaluation import metrics  # noqa: E402


def distributions(dim: int, seed: int = 0):
  rs = np.random.RandomState(seed)
  u, _ = np.linalg.qr(rs.standard_normal((dim, dim)))
  a = 2.0 / (1.0 + np.arange(dim) / 40.0)
  b = a * np.exp(0.25 * rs.standard_normal(dim))  # per-direction variance mismatch
  delta = u @ (rs.standard_normal(dim) * np.sqrt(a) * 0.1)  # a mean shift along the feature spectrum
  true_fid = float(delta @ delta + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
  p = (np.zeros(dim), u * np.sqrt(a))  # (mean, factor L with cov = L L^T)
  q = (delta, u * np.sqrt(b))
  return p, q, true_fid


def sample(dist, n: int, rs: np.random.RandomState) -> np.ndarray:
  mean, factor = dist
  return rs.standard_normal((n, factor.shape[1])) @ factor.T + mean


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
  parser.add_argument("--trials", type=int, default=3)
  args = parser.parse_args()
  p, q, true_fid = distributions(args.dim)
  start = time.time()
  rows = []
  for label, (d1, d2), truth in (("P vs Q", (p, q), true_fid), ("P vs P", (p, p), 0.0)):
    values = {}
    for n in args.sizes:
      fids, rank_warned = [], False
      for t in range(args.trials):
        rs = np.random.RandomState(1000 * n + t)
        with warnings.catch_warnings(record=True) as caught:
          warnings.simplefilter("always")
          fid = metrics.fid_from_stats(*metrics.compute_stats(sample(d1, n, rs)),
                                       *metrics.compute_stats(sample(d2, n, rs)))
        rank_warned |= any(issubclass(w.category, metrics.RankDeficientCovarianceWarning) for w in caught)
        fids.append(fid)
      values[n] = (np.mean(fids), np.std(fids), rank_warned)
      print(f"# {label} N={n}: {np.round(fids, 3)} ({time.time() - start:.0f} s)", file=sys.stderr)
    fit = [n for n in args.sizes if n > args.dim]  # full-rank covariances only
    fit = fit if len(fit) >= 2 else list(args.sizes)
    slope, intercept = np.polyfit([1.0 / n for n in fit], [values[n][0] for n in fit], 1)
    rows.append((label, truth, values, intercept, slope))

  print(f"| pair | true FID | " + " | ".join(f"FID at N = {n // 1000}k" if n % 1000 == 0 else f"N = {n}"
                                           for n in args.sizes) + " | FID_inf (fit in 1/N, N > D) | slope k |")
  print("|---|---|" + "---|" * len(args.sizes) + "---|---|")
  for label, truth, values, intercept, slope in rows:
    cells = [f"{m:.3f} +- {s:.3f}{' (rank-deficient)' if w else ''}" for m, s, w in values.values()]
    print(f"| {label} | {truth:.3f} | " + " | ".join(cells) + f" | {intercept:.3f} | {slope:.0f} |")
  print(f"\n{args.trials} trials per cell (mean +- std over trials), D = {args.dim}, both sets of N samples; "
        f"{time.time() - start:.0f} s on this machine.")


if __name__ == "__main__":
  main()
