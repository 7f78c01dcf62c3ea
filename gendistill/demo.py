"""`make demo`: the embedded end-to-end run, no download.

Trains a small class-conditional EDM teacher on the scikit-learn digits (or reuses the one already in the
workdir), samples it with Heun at NFE 35, and writes a report into the workdir: loss curve, sample grid (one
column per class), and report.json with the digits FD and class accuracy.
"""
import json
import os
import time

from absl import app, flags, logging

import gendistill  # noqa: F401  (CPU flags before jax starts)
import jax
import numpy as np

from gendistill import data as data_lib
from gendistill import evaluation
from gendistill import objectives
from gendistill import train
from gendistill.checkpoint import restore_state
from gendistill.diffusion import heun_nfe

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Where the runs and the report go.")
_STEPS = flags.DEFINE_integer("teacher_steps", None, "Override the teacher's training steps.")
_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Samples for the digits FD and class accuracy.")


def teacher_config():
  from configs import edm  # pylint: disable=g-import-not-at-top
  config = edm.get_config("digits")
  if _STEPS.value:
    config.train.num_steps = _STEPS.value
  return config


def evaluate_sampler(objective, state, spec, num, steps, seed=0):
  t0 = time.time()
  samples, labels = train.generate(objective, state, jax.random.key(seed), num, 500, spec.num_classes, steps)
  seconds = time.time() - t0
  return samples, {**evaluation.digits_metrics(samples, labels), "sampling_seconds": seconds}


def plot_loss(workdir: str, key: str, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [r for r in train.read_metrics(workdir) if key in r]
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot([r["step"] for r in rows], [r[key] for r in rows])
  ax.set_xlabel("step")
  ax.set_ylabel(key)
  ax.set_yscale("log")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  report = {"jax_backend": jax.default_backend(), "devices": jax.device_count()}

  config = teacher_config()
  teacher_dir = os.path.join(workdir, "teacher")
  t0 = time.time()
  train.train_and_evaluate(config, teacher_dir)
  report["teacher_train_seconds"] = time.time() - t0
  report["teacher_steps"] = config.train.num_steps

  dataset = data_lib.build(config.data)
  spec = dataset.spec
  objective = objectives.build(config, spec)
  state = restore_state(teacher_dir, objective, spec)
  steps = config.sampler.num_steps
  samples, metrics = evaluate_sampler(objective, state, spec, _SAMPLES.value, steps)
  report["teacher_heun"] = {"nfe": heun_nfe(steps), **metrics}
  real = dataset.reference(_SAMPLES.value)
  report["real_digits"] = evaluation.digits_metrics(real["image"], real["label"])  # the scale of the metric

  evaluation.save_image_grid(samples[:100], os.path.join(workdir, "teacher_heun_nfe35.png"), ncols=10)
  plot_loss(teacher_dir, "denoiser/loss", os.path.join(workdir, "teacher_loss.png"))
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  logging.info("Report: %s", json.dumps(report, indent=2))
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
