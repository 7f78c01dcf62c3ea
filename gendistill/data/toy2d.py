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

* ``family:SEED`` (SEED a non-negative integer): one member of a seeded family of mixtures, for benchmarks on
  data nobody tuned on (`family`). Deterministic per seed. Per member: K ~ U{3..10} components; K - 1 "bulk"
  components with major std a ~ U[0.08, 0.25], anisotropy b / a log-uniform in [0.15, 1], rotation U[0, pi),
  weights 0.02 + (1 - 0.02 (K - 1) - w_far) Dirichlet(2, ..., 2), means in the unit disc with every pair at
  least s (a_i + a_j) apart, separation s ~ U[2.5, 4] per member (times 0.9 per restart if the disc gets
  crowded); and one small far mode (the last component)
  of weight w_far ~ U[0.03, 0.08], std ~ U[0.05, 0.12], anisotropic and rotated alike, at f ~ U[1.6, 2.4]
  times the largest bulk radius in a random direction. The whole mixture is then shifted and scaled per
  coordinate to mean 0 and standard deviation exactly 1 per coordinate.

User data (through the data config, see gendistill/data/__init__.py):

* ``mixture``: the user's Gaussian mixture, from `data.toy2d_mixture` (JSON: {"weights": [K], "means": [K][2],
  "covs": [K][2][2]}) or from an .npz with arrays weights, means, covs at `data.path`; checked by
  `check_mixture` (weights >= 0 summing to 1, symmetric positive-definite covariances, matching shapes).
* ``points``: the points of an .npy ([n, 2]) or .npz (one array, or an array named `x`, [n, 2]) at
  `data.path`. The training pool is all of them; there is no analytic teacher (train an `edm` teacher on the
  points and use it as a workdir teacher).

The Gaussian-mixture kinds (named, family and user mixtures) expose their exact parameters through
`mixture(kind)` / `user_mixture(...)`, so an analytic teacher can compute the exact denoiser of the same
distribution the data is sampled from. Every built-in kind is scaled so that the data has roughly unit
standard deviation per coordinate.

The training set of a kind is a fixed pool of samples, `pool(kind, size)`, drawn with `POOL_SEED`;
evaluation references use `REFERENCE_SEED`, so they are fresh samples from the same distribution.
"""
import functools
import json
import os
import re
from typing import NamedTuple

import numpy as np

MIXTURE_KINDS = ("ring8", "ring8_unequal", "grid25", "grid25_unequal")
SAMPLE_KINDS = ("swiss_roll", "moons")
KINDS = MIXTURE_KINDS + SAMPLE_KINDS
USER_KINDS = ("mixture", "points")   # read from the data config (toy2d_mixture / path), see `user_mixture`
FAMILY_PREFIX = "family:"            # family:SEED, see `family`
ALL_KINDS_TEXT = ", ".join(KINDS + USER_KINDS) + ", family:SEED"
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


def family_seed(kind: str) -> int | None:
  """SEED of a 'family:SEED' kind, else None."""
  match = re.fullmatch(r"family:(\d+)", kind) if isinstance(kind, str) else None
  return int(match.group(1)) if match else None


def is_known_kind(kind) -> bool:
  return kind in KINDS or kind in USER_KINDS or family_seed(kind) is not None


def _check_kind(kind: str):
  if kind in USER_KINDS:
    raise ValueError(f"toy2d kind {kind!r} is read from the data config (data.toy2d_mixture / data.path): "
                     "use user_mixture / load_points, or data.build(config.data).")
  if not is_known_kind(kind):
    raise ValueError(f"Unknown toy2d kind {kind!r}; allowed kinds: {ALL_KINDS_TEXT} "
                     "(SEED a non-negative integer).")


def _linear_weights(k: int) -> np.ndarray:
  w = np.arange(1, k + 1, dtype=np.float64)
  return w / w.sum()


def mixture(kind: str) -> GaussianMixture | None:
  """The exact parameters of a Gaussian-mixture kind (float64), or None for sample-based kinds."""
  _check_kind(kind)
  seed = family_seed(kind)
  if seed is not None:
    return family(seed)
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


# ------------------------------------------------------------------------------------------------------------
# The seeded family of mixtures.

_FAMILY_SALT = 18   # mixed into every member's seed, so that family:0 is not the other seed-0 streams


def _rotated_cov(rng, std_lo, std_hi):
  """R(theta) diag(a^2, b^2) R(theta)^T with a ~ U[std_lo, std_hi], b / a log-uniform in [0.15, 1]."""
  a = rng.uniform(std_lo, std_hi)
  b = a * np.exp(rng.uniform(np.log(0.15), 0.0))
  theta = rng.uniform(0.0, np.pi)
  rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  return rot @ np.diag([a * a, b * b]) @ rot.T, a


@functools.lru_cache(maxsize=64)
def family(seed: int) -> GaussianMixture:
  """Member `seed` of the seeded family of mixtures (see the module docstring), float64, deterministic."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"family seed must be a non-negative integer, got {seed!r}.")
  rng = np.random.default_rng([_FAMILY_SALT, int(seed)])
  k = int(rng.integers(3, 11))
  bulk = k - 1
  w_far = rng.uniform(0.03, 0.08)
  weights = np.append(0.02 + (1.0 - 0.02 * bulk - w_far) * rng.dirichlet(np.full(bulk, 2.0)), w_far)
  covs, stds = zip(*[_rotated_cov(rng, 0.08, 0.25) for _ in range(bulk)])
  sep = rng.uniform(2.5, 4.0)
  means = []
  while len(means) < bulk:   # rejection sampling in the unit disc; relax the separation if it gets crowded
    for _ in range(2000):
      r, phi = np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
      mu = r * np.array([np.cos(phi), np.sin(phi)])
      i = len(means)
      if all(np.linalg.norm(mu - m) >= sep * (stds[i] + stds[j]) for j, m in enumerate(means)):
        means.append(mu)
        break
    else:
      means, sep = [], 0.9 * sep
  means = np.array(means)
  far_cov, _ = _rotated_cov(rng, 0.05, 0.12)
  phi = rng.uniform(0.0, 2.0 * np.pi)
  centre = weights[:bulk] @ means / weights[:bulk].sum()
  far_radius = rng.uniform(1.6, 2.4) * np.max(np.linalg.norm(means - centre, axis=1))
  far_mean = centre + far_radius * np.array([np.cos(phi), np.sin(phi)])
  raw = GaussianMixture(weights=weights, means=np.vstack([means, far_mean]),
                        covs=np.stack(list(covs) + [far_cov]))
  # Standardise: mean 0 and std 1 per coordinate (a diagonal affine map keeps every component Gaussian).
  scale = 1.0 / np.sqrt(np.diag(raw.cov()))
  means = (raw.means - raw.mean()) * scale
  covs = raw.covs * scale[None, :, None] * scale[None, None, :]
  return GaussianMixture(weights=weights, means=means, covs=covs)


# ------------------------------------------------------------------------------------------------------------
# User data: a mixture (config JSON or .npz) or a file of points.


def check_mixture(weights, means, covs, where: str = "the mixture") -> GaussianMixture:
  """A GaussianMixture (float64) of the arrays, or a ValueError naming what is wrong in `where`: weights [K]
  >= 0 summing to 1, means [K, 2], covs [K, 2, 2] symmetric positive definite."""
  try:
    weights, means, covs = (np.asarray(a, dtype=np.float64) for a in (weights, means, covs))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: weights, means and covs must be numeric arrays ({e}).") from None
  if weights.ndim != 1 or weights.shape[0] < 1:
    raise ValueError(f"{where}: weights must be a list of K >= 1 numbers, got shape {weights.shape}.")
  k = weights.shape[0]
  if means.shape != (k, DIM):
    raise ValueError(f"{where}: means must have shape [K, 2] = ({k}, {DIM}) for K = {k} weights, got {means.shape}.")
  if covs.shape != (k, DIM, DIM):
    raise ValueError(f"{where}: covs must have shape [K, 2, 2] = ({k}, {DIM}, {DIM}), got {covs.shape}.")
  if not all(np.all(np.isfinite(a)) for a in (weights, means, covs)):
    raise ValueError(f"{where}: weights, means and covs must be finite.")
  if np.any(weights < 0) or abs(weights.sum() - 1.0) > 1e-6:
    raise ValueError(f"{where}: weights must be >= 0 and sum to 1 (got {weights.tolist()}, sum {weights.sum():.6g}).")
  for j in range(k):
    c = covs[j]
    if not np.allclose(c, c.T, rtol=1e-6, atol=1e-9):
      raise ValueError(f"{where}: covs[{j}] = {c.tolist()} is not symmetric.")
    if np.min(np.linalg.eigvalsh(c)) <= 0:
      raise ValueError(f"{where}: covs[{j}] = {c.tolist()} is not positive definite (eigenvalues "
                       f"{np.linalg.eigvalsh(c).tolist()}).")
  return GaussianMixture(weights=weights / weights.sum(), means=means, covs=0.5 * (covs + covs.transpose(0, 2, 1)))


def _load_npz(path: str, what: str):
  if not path:
    raise ValueError(f"{what} needs data.path (the file to read).")
  if not os.path.isfile(path):
    raise ValueError(f"data.path = {path!r}: no such file ({what}).")
  try:
    loaded = np.load(path, allow_pickle=False)   # never unpickle a user's file
    if isinstance(loaded, np.ndarray):
      return loaded
    with loaded:
      return {name: loaded[name] for name in loaded.files}   # an .npz: a dict of its arrays
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"data.path = {path!r}: not a readable .npy/.npz file ({type(e).__name__}: {e}).") from None


def user_mixture(mixture_json: str = "", path: str = "") -> GaussianMixture:
  """The user's mixture of kind 'mixture': JSON `mixture_json` (data.toy2d_mixture) or the .npz at `path`
  (data.path) with arrays weights, means, covs. Exactly one of the two. Checked by `check_mixture`."""
  if bool(mixture_json) == bool(path):
    raise ValueError("data.toy2d_kind='mixture' needs exactly one of data.toy2d_mixture (JSON with weights, means, "
                     "covs) and data.path (an .npz with those arrays); "
                     + ("both are set." if path else "neither is set."))
  if mixture_json:
    where = "data.toy2d_mixture"
    try:
      spec = json.loads(mixture_json)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where} is not valid JSON ({e}); expected "
                       '{"weights": [...], "means": [[x, y], ...], "covs": [[[a, b], [b, c]], ...]}.') from None
  else:
    where = f"data.path = {path!r}"
    spec = _load_npz(path, "data.toy2d_kind='mixture'")
  keys = set(spec.keys()) if isinstance(spec, dict) else set()
  if not {"weights", "means", "covs"} <= keys:
    raise ValueError(f"{where} must be a JSON object or .npz holding weights, means and covs; it has "
                     f"{sorted(keys) if keys else type(spec).__name__}.")
  return check_mixture(spec["weights"], spec["means"], spec["covs"], where)


def load_points(path: str) -> np.ndarray:
  """The points of kind 'points': an .npy [n, 2] or an .npz with one array (or one named `x`) [n, 2];
  float32, read-only."""
  loaded = _load_npz(path, "data.toy2d_kind='points'")
  if isinstance(loaded, dict):
    names = sorted(loaded)
    if "x" in names:
      loaded = loaded["x"]
    elif len(names) == 1:
      loaded = loaded[names[0]]
    else:
      raise ValueError(f"data.path = {path!r}: an .npz of points must hold one array or one named 'x'; it has "
                       f"{names}.")
  x = np.asarray(loaded)
  if x.ndim != 2 or x.shape[1] != DIM or x.shape[0] < 2 or not np.issubdtype(x.dtype, np.number):
    raise ValueError(f"data.path = {path!r}: points must be a numeric array of shape [n, 2] with n >= 2, got "
                     f"{x.dtype} {x.shape}.")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"data.path = {path!r}: the points must be finite.")
  x.setflags(write=False)
  return x
