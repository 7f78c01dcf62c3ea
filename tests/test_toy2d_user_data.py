"""User 2-D data (a mixture from the config or an .npz, points from a file) and the seeded family of mixtures."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import base
from gendistill import data, teachers, validation
from gendistill.data import toy2d
from gendistill.evaluation.toy_metrics import mahalanobis_distances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Unequal weights, rotated anisotropic covariances, a small far mode.
WEIGHTS = [0.5, 0.3, 0.15, 0.05]
MEANS = [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2], [3.0, 3.0]]
COVS = [[[0.04, 0.03], [0.03, 0.05]], [[0.01, 0.0], [0.0, 0.09]], [[0.09, -0.02], [-0.02, 0.02]],
        [[0.005, 0.0], [0.0, 0.005]]]
MIXTURE_JSON = json.dumps(dict(weights=WEIGHTS, means=MEANS, covs=COVS))


def _config(**overrides):
  cfg = ml_collections.ConfigDict(dict(data.DEFAULTS))
  cfg.update(toy2d_size=2048, batch_size=64)
  cfg.update(overrides)
  return cfg


def _run_config(**data_overrides):
  c = base.get_config("edm")
  c.data.update(name="toy2d", conditional=False, batch_size=64, **data_overrides)
  return c


def _assert_mixture(mix, weights, means, covs):
  np.testing.assert_allclose(mix.weights, weights)
  np.testing.assert_allclose(mix.means, means)
  np.testing.assert_allclose(mix.covs, covs)


def test_mixture_from_config_json_round_trips_and_samples_it():
  ds = data.build(_config(toy2d_kind="mixture", toy2d_mixture=MIXTURE_JSON))
  _assert_mixture(ds.mixture, WEIGHTS, MEANS, COVS)
  assert ds.num_examples == 2048 and ds.spec == data.DataSpec("x", (2,), 0)
  batch = next(ds.iterator())["x"]
  assert batch.shape == (64, 2)
  pool = ds.mixture.sample(2048, toy2d.POOL_SEED)
  assert all(np.any(np.all(pool == row, axis=1)) for row in batch)   # batches come from the mixture's pool
  ref = ds.reference(50_000)["x"]                                   # fresh samples with the mixture's moments
  np.testing.assert_allclose(ref.mean(0), ds.mixture.mean(), atol=0.03)
  np.testing.assert_allclose(np.cov(ref.T), ds.mixture.cov(), atol=0.05)


def test_mixture_from_npz_file_equals_the_config_json(tmp_path):
  path = str(tmp_path / "mix.npz")
  np.savez(path, weights=WEIGHTS, means=MEANS, covs=COVS)
  from_file = data.build(_config(toy2d_kind="mixture", path=path))
  from_json = data.build(_config(toy2d_kind="mixture", toy2d_mixture=MIXTURE_JSON))
  _assert_mixture(from_file.mixture, WEIGHTS, MEANS, COVS)
  np.testing.assert_array_equal(next(from_file.iterator())["x"], next(from_json.iterator())["x"])


def _tweedie_denoiser(y, sigma):
  """E[x | y] = y + sigma^2 grad log p_sigma(y), the gradient by central differences of scipy's density."""
  def log_p(point):
    return np.log(sum(w * stats.multivariate_normal(m, np.array(c) + sigma**2 * np.eye(2)).pdf(point)
                      for w, m, c in zip(WEIGHTS, MEANS, COVS)))
  h = 1e-5
  grad = np.array([(log_p(y + h * e) - log_p(y - h * e)) / (2 * h) for e in np.eye(2)])
  return y + sigma**2 * grad


@pytest.mark.parametrize("sigma", [0.05, 0.4, 2.0])
def test_analytic_teacher_is_the_exact_denoiser_of_the_user_mixture(sigma):
  ds = data.build(_config(toy2d_kind="mixture", toy2d_mixture=MIXTURE_JSON))
  teacher = teachers.build(ml_collections.ConfigDict(dict(source="analytic", workdir="", step=-1)), ds)
  points = np.array([[0.3, -0.2], [-1.1, 0.1], [2.5, 2.8], [0.0, -1.0]])
  got = np.asarray(teacher(jnp.asarray(points), sigma))
  want = np.stack([_tweedie_denoiser(p, sigma) for p in points])
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_points_file_is_the_pool_and_has_no_analytic_teacher(tmp_path):
  points = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
  np.save(tmp_path / "p.npy", points)
  np.savez(tmp_path / "p.npz", x=points, other=np.zeros(3))
  for name in ("p.npy", "p.npz"):
    ds = data.build(_config(toy2d_kind="points", path=str(tmp_path / name)))
    assert ds.mixture is None and ds.num_examples == 300
    np.testing.assert_array_equal(ds.reference()["x"], points)
    got = np.concatenate([next(it)["x"] for it in [ds.iterator()] for _ in range(5)])   # one epoch of 5 x 64 >= 300
    assert {tuple(r) for r in got[:300]} <= {tuple(r) for r in points}
  with pytest.raises(ValueError, match="toy2d_kind='points'.*teacher.source='workdir'"):
    teachers.build(ml_collections.ConfigDict(dict(source="analytic", workdir="", step=-1)), ds)
  c = _run_config(toy2d_kind="points", path=str(tmp_path / "p.npy"))
  c.teacher.source = "analytic"
  with pytest.raises(validation.ConfigError, match="teacher.source.*points"):
    validation.check_config(c)


def test_family_is_deterministic_and_has_the_documented_properties():
  ks, ratios = set(), []
  for seed in range(30):
    mix = toy2d.family(seed)
    again = toy2d.family.__wrapped__(seed)   # recomputed, not the cached object
    for a, b in zip(mix, again):
      np.testing.assert_array_equal(a, b)
    k = mix.num_components
    ks.add(k)
    assert 3 <= k <= 10
    np.testing.assert_allclose(mix.weights.sum(), 1.0)
    assert mix.weights.min() >= 0.02 * 0.999
    assert 0.03 <= mix.weights[-1] <= 0.08                          # the small far mode is the last component
    dist = np.linalg.norm(mix.means, axis=1)
    assert dist[-1] == dist.max()
    np.testing.assert_allclose(mix.mean(), 0.0, atol=1e-12)         # standardised exactly
    np.testing.assert_allclose(np.diag(mix.cov()), 1.0)
    eig = np.linalg.eigvalsh(mix.covs)
    assert np.all(eig > 0)
    ratios.extend(np.sqrt(eig[:, 0] / eig[:, 1]))
    # Components are separated: every mean is > 2 component stds (Mahalanobis, which the standardisation keeps)
    # from every other component.
    r = mahalanobis_distances(mix.means, mix.means, mix.covs)
    assert np.all(r[~np.eye(k, dtype=bool)] > 2.0)
    mix_ = toy2d.mixture(f"family:{seed}")
    np.testing.assert_array_equal(mix_.means, mix.means)
  assert len(ks) >= 5                                               # the number of components varies
  assert min(ratios) < 0.3 and max(ratios) > 0.8                    # anisotropic and near-isotropic components
  assert not np.array_equal(toy2d.family(0).means[:3], toy2d.family(1).means[:3])
  ds = data.build(_config(toy2d_kind="family:3"))
  np.testing.assert_array_equal(ds.mixture.weights, toy2d.family(3).weights)


@pytest.mark.parametrize("weights,means,covs,match", [
    ([0.5, 0.6], MEANS[:2], COVS[:2], "sum to 1"),
    ([1.2, -0.2], MEANS[:2], COVS[:2], ">= 0"),
    ([0.5, 0.5], MEANS[:3], COVS[:2], r"means must have shape \[K, 2\]"),
    ([0.5, 0.5], MEANS[:2], [[1.0, 0.0], [0.0, 1.0]], r"covs must have shape \[K, 2, 2\]"),
    ([0.5, 0.5], MEANS[:2], [COVS[0], [[1.0, 0.5], [0.0, 1.0]]], r"covs\[1\].*not symmetric"),
    ([0.5, 0.5], MEANS[:2], [COVS[0], [[1.0, 2.0], [2.0, 1.0]]], r"covs\[1\].*not positive definite"),
])
def test_bad_mixture_is_one_clear_error_at_config_check(weights, means, covs, match):
  spec = json.dumps(dict(weights=weights, means=means, covs=covs))
  with pytest.raises(ValueError, match="data.toy2d_mixture: .*" + match):
    data.build(_config(toy2d_kind="mixture", toy2d_mixture=spec))
  with pytest.raises(validation.ConfigError, match="data.toy2d_kind.*" + match):
    validation.check_config(_run_config(toy2d_kind="mixture", toy2d_mixture=spec))


def test_bad_files_and_settings_name_the_cause(tmp_path):
  cases = [
      (dict(toy2d_kind="mixture", path=str(tmp_path / "missing.npz")), "no such file"),
      (dict(toy2d_kind="mixture"), "neither is set"),
      (dict(toy2d_kind="mixture", toy2d_mixture=MIXTURE_JSON, path=str(tmp_path / "m.npz")), "both are set"),
      (dict(toy2d_kind="mixture", toy2d_mixture="{weights: [1]"), "not valid JSON"),
      (dict(toy2d_kind="mixture", toy2d_mixture='{"weights": [1]}'), "weights, means and covs"),
      (dict(toy2d_kind="points", path=str(tmp_path / "bad.npy")), r"shape \[n, 2\]"),
      (dict(toy2d_kind="points", path=str(tmp_path / "pickle.npy")), "not a readable"),
      (dict(toy2d_kind="ring8", path=str(tmp_path / "bad.npy")), "read only by toy2d_kind"),
  ]
  np.save(tmp_path / "bad.npy", np.zeros((10, 3)))
  np.save(tmp_path / "pickle.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  for overrides, match in cases:
    with pytest.raises(ValueError, match=match):
      data.build(_config(**overrides))
    with pytest.raises(validation.ConfigError, match=match):
      validation.check_config(_run_config(**overrides))
  for kind in ("family:x", "family:-1", "ring9"):
    with pytest.raises(validation.ConfigError, match=r"data.toy2d_kind.*family:SEED"):
      validation.check_config(_run_config(toy2d_kind=kind))


def test_launcher_trains_on_a_family_member_and_rejects_a_bad_mixture(tmp_path):
  run = lambda *flags: subprocess.run(
      [sys.executable, "-m", "gendistill.main", "--config=configs/edm.py:toy2d,smoke", f"--workdir={tmp_path}/w",
       *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
  bad = run("--config.data.toy2d_kind=mixture", '--config.data.toy2d_mixture={"weights": [0.5, 0.6], '
            '"means": [[0, 0], [1, 1]], "covs": [[[1, 0], [0, 1]], [[1, 0], [0, 1]]]}')
  assert bad.returncode == 1 and "sum to 1" in bad.stderr and "Traceback" not in bad.stderr
  good = run("--config.data.toy2d_kind=family:3")
  assert good.returncode == 0, good.stderr[-3000:]
  with open(tmp_path / "w" / "config.json") as f:
    assert json.load(f)["config"]["data"]["toy2d_kind"] == "family:3"
  assert os.path.exists(tmp_path / "w" / "final.json")
