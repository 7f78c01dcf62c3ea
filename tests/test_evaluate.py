"""python -m gendistill.evaluate on small runs: offline metrics, and FID & co. with seeded Inception weights."""
import json
import os

import numpy as np

from configs import edm as edm_config
from gendistill import evaluate
from gendistill import train
from gendistill.evaluation import inception


def test_evaluate_toy_run_reports_offline_metrics(tmp_path):
  config = edm_config.get_config("toy2d,smoke")
  train.train_and_evaluate(config, str(tmp_path))
  results = evaluate.evaluate_run(str(tmp_path), num_samples=64, batch_size=32, steps=2)
  assert results["step"] == config.train.num_steps
  for key in ("mmd2", "sliced_wasserstein", "num_modes_covered"):
    assert np.isfinite(results[key])
  with open(tmp_path / "eval" / f"step_{results['step']:08d}.json") as f:
    assert json.load(f)["num_samples"] == 64


def test_evaluate_digits_run_with_inception_metrics(tmp_path):
  config = edm_config.get_config("digits,smoke")
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  weights = str(tmp_path / "inception.npz")
  inception.save_params_npz(inception.random_state_dict(0), weights)
  results = evaluate.evaluate_run(workdir, num_samples=20, batch_size=10, steps=2, inception_weights=weights,
                                  ref_images_from_data=20)
  for key in ("digits_fd", "class_accuracy", "fid", "kid", "is", "precision", "recall"):
    assert key in results and np.isfinite(results[key]), key
  assert os.path.exists(os.path.join(workdir, "eval"))
