"""Two-dimensional toy datasets, embedded and offline.

Kinds:

* ``ring8``: 8 isotropic Gaussians (std 0.1) with means on a circle of radius sqrt(2), at angles
  2*pi*k/8. Per-coordinate variance of the mixture is 1 + 0.1**2; neighbouring means are 1.08 apart
  (about 11 component stds).
* ``grid25``: 25 isotropic Gaussians (std 0.07) with means on the 5 x 5 grid {-2,...,2}**2 / sqrt(2)
  (row-major: component k has x index k // 5, y index k % 5). Per-coordinate variance 1 + 0.07**2;
  neighbouring means are 0.71 apart (about 10 component stds).
* ``ring8_unequal``, ``grid25_unequal``: the same components with unequal weights proportional to
  1, 2, ..., K (component k has weight (k + 1) / (K (K + 1) / 2)).
* ``swiss_roll``: t ~ U[1.5 pi, 4.5 pi], x = ((t cos t, t sin t) - (2, 2 / (3 pi))) / 7 + N(0, 0.05**2 I)
  (the subtracted vector is the exact mean, so the roll is centred).
* ``moons``: ``sklearn.datasets.make_moons(noise=0.05)``, centred at (0.5, 0.25) and divided by 0.72.

The Gaussian-mixture kinds expose their exact parameters through `mixture(kind)`, so an analytic teacher
can compute the exact denoiser of the same distribution the data is sampled from. Every kind is scaled so
that the data has roughly unit standard deviation per coordinate.

The training set of a kind is a fixed pool of samples, `pool(kind, size)`, drawn with `POOL_SEED`;
evaluation references use `REFERENCE_SEED`, so they are fresh samples from the same distribution.
"""
import functools
from typing import NamedTuple

import numpy as np

MIXTURE_KINDS = ("ring8", "ring8_unequal", "grid25", "grid25_unequal")
SAMPLE_KINDS = ("swiss_roll", "moons")
KINDS = MIXTURE_KINDS + SAMPLE_KINDS
DIM = 2
POOL_SEED = 0
REFERENCE_SEED = 1

# E[(t cos t, t sin t)] for t ~ U[1.5 pi, 4.5 pi], so that the swiss roll is centred.
_SWISS_ROLL_MEAN = np.array([2.0, 2.0 / (3.0 * np.pi)])
RING8_RADIUS = float(np.sqrt(2.0))
RING8_STD = 0.1
GRID25_SPACING = float(1.0 / np.sqrt(2.0))
GRID25_STD = 0.07


class GaussianMixture(NamedTuple):
  """A mixture of K Gaussians in D dimensions (numpy arrays; a NamedTuple, hence a JAX pytree)."""
  weights: np.ndarray  # [K], sums to 1
  means: np.ndarray  # [K, D]
  covs: np.ndarray  # [K, D, D]

  @property
  def num_components(self) -> int:
    return self.weights.shape[0]

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def mean(self) -> np.ndarray:
    """The mixture mean, [D]."""
    return np.einsum("k,kd->d", self.weights, self.means)

  def cov(self) -> np.ndarray:
    """The mixture covariance, [D, D] (within-component plus between-component)."""
    centred = self.means - self.mean()
    return (np.einsum("k,kde->de", self.weights, self.covs)
            + np.einsum("k,kd,ke->de", self.weights, centred, centred))

  def sample(self, n: int, seed: int, return_components: bool = False):
    """n samples float32 [n, D] (and their component indices int32 [n] if asked)."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(self.num_components, size=n, p=self.weights)
    z = rng.standard_normal((n, self.dim))
    chol = np.linalg.cholesky(self.covs)
    x = (self.means[comp] + np.einsum("nde,ne->nd", chol[comp], z)).astype(np.float32)
    if return_components:
      return x, comp.astype(np.int32)
    return x


def _check_kind(kind: str):
  if kind not in KINDS:
    raise ValueError(f"Unknown toy2d kind {kind!r}; allowed kinds: {', '.join(KINDS)}.")


def _linear_weights(k: int) -> np.ndarray:
  w = np.arange(1, k + 1, dtype=np.float64)
  return w / w.sum()


def mixture(kind: str) -> GaussianMixture | None:
  """The exact parameters of a Gaussian-mixture kind (float64), or None for sample-based kinds."""
  _check_kind(kind)
  if kind not in MIXTURE_KINDS:
    return None
  if kind.startswith("ring8"):
    angles = 2.0 * np.pi * np.arange(8) / 8
    means = RING8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    std = RING8_STD
  else:
    ticks = (np.arange(5) - 2.0) * GRID25_SPACING
    gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
    means = np.stack([gx.ravel(), gy.ravel()], axis=1)
    std = GRID25_STD
  k = means.shape[0]
  weights = _linear_weights(k) if kind.endswith("_unequal") else np.full(k, 1.0 / k)
  covs = np.broadcast_to(std**2 * np.eye(DIM), (k, DIM, DIM)).copy()
  return GaussianMixture(weights=weights, means=means, covs=covs)


def sample(kind: str, n: int, seed: int) -> np.ndarray:
  """n samples of `kind`, float32 [n, 2], a deterministic function of (kind, n, seed)."""
  _check_kind(kind)
  mix = mixture(kind)
  if mix is not None:
    return mix.sample(n, seed)
  if kind == "swiss_roll":
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    x = (np.stack([t * np.cos(t), t * np.sin(t)], axis=1) - _SWISS_ROLL_MEAN) / 7.0
    x = x + 0.05 * rng.standard_normal((n, DIM))
    return x.astype(np.float32)
  if kind == "moons":
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    x, _ = datasets.make_moons(n, noise=0.05, random_state=seed)
    return ((x - np.array([0.5, 0.25])) / 0.72).astype(np.float32)
  raise AssertionError(kind)


@functools.lru_cache(maxsize=8)
def pool(kind: str, size: int) -> np.ndarray:
  """The fixed training pool of `kind`: `sample(kind, size, POOL_SEED)`, read-only."""
  x = sample(kind, size, POOL_SEED)
  x.setflags(write=False)
  return x
