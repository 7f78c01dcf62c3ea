"""python -m gendistill.evaluate on small runs: offline metrics, and FID & co. with seeded Inception weights."""
import json
import os

import numpy as np
import pytest

from configs import edm as edm_config
from gendistill import data as data_lib
from gendistill import evaluate
from gendistill import evaluation
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


def test_inception_metrics_during_training_and_from_the_cli_entry(tmp_path):
  """FID & co versus step in the training loop (config.eval.inception_weights), then evaluate_run reusing them."""
  weights = str(tmp_path / "inception.npz")
  inception.save_params_npz(inception.random_state_dict(0), weights)
  config = edm_config.get_config("digits,smoke")
  config.train.update(num_steps=2, eval_every=1)
  config.eval.update(num_samples=16, batch_size=16, inception_weights=weights, ref_images=16,
                     inception_batch_size=16)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  rows = [r for r in train.read_metrics(workdir) if "eval/fid" in r]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    for key in ("eval/digits_fd", "eval/class_accuracy", "eval/fid", "eval/kid", "eval/is", "eval/precision",
                "eval/recall"):
      assert np.isfinite(r[key]), key
  assert rows[0]["eval/fid"] != rows[1]["eval/fid"]      # a step changed the samples, and the metric saw it

  # The run's own eval settings (with its Inception weights) are the default of evaluate_run.
  results = evaluate.evaluate_run(workdir, num_samples=16, batch_size=16, steps=2)
  for key in ("digits_fd", "class_accuracy", "fid", "kid", "is", "precision", "recall"):
    assert key in results and np.isfinite(results[key]), key
  assert os.path.exists(os.path.join(workdir, "eval", "step_00000002.json"))


def test_inception_metrics_need_a_reference(tmp_path):
  config = edm_config.get_config("digits,smoke")
  config.eval.update(inception_weights=str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match="reference"):
    evaluation.make_evaluator(data_lib.build(config.data), config.eval)
