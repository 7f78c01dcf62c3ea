"""Evaluate a run: python -m gendistill.evaluate --workdir=DIR [--checkpoint=STEP] [--num_samples=N].

Samples the run's exported sampler (class-balanced for conditional models) and reports
- the offline metrics of embedded data (toy2d: MMD, sliced Wasserstein, energy, mode coverage; digits: digits
  FD and class accuracy), and
- with --inception_weights (a local pytorch-fid .pth or our .npz; never downloaded) and --ref_stats (an .npz
  with mu/sigma, e.g. EDM's) or --ref_images_from_data: FID, KID, IS and precision/recall.
Results are printed and written to DIR/eval/step_<step>.json. DIR and the files may be gs:// paths
(gendistill.paths).
"""
import json
import sys
import time

from absl import app, flags, logging

import gendistill  # noqa: F401  (CPU flags before jax starts)
import jax
import ml_collections

from gendistill import checkpoint as ckpt_lib
from gendistill import data as data_lib
from gendistill import evaluation
from gendistill import logs
from gendistill import objectives
from gendistill import paths
from gendistill import sharding
from gendistill import teachers
from gendistill import train
from gendistill import validation
from gendistill.data import DataSpec

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the newest).")
_NUM = flags.DEFINE_integer("num_samples", 10_000, "Number of samples.")
_BATCH = flags.DEFINE_integer("batch_size", 250, "Sampling batch size.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: the objective's).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_WEIGHTS = flags.DEFINE_string("inception_weights", None,
                                "Inception weights for FID & co. (a local or gs:// path; never downloaded).")
_REF_STATS = flags.DEFINE_string("ref_stats", None, ".npz reference statistics with mu and sigma.")
_PREPROCESSING = flags.DEFINE_enum("inception_preprocessing", None, ["nvidia", "pytorch_fid"],
                                   "Inception input pipeline (default: the run's eval.inception_preprocessing, "
                                   "else 'nvidia', the one of EDM's reference statistics; docs/evaluation.md).")
_REF_FROM_DATA = flags.DEFINE_integer("ref_images_from_data", 0,
                                      "Use this many of the run's real images as the FID/KID/PR reference.")


def evaluate_run(workdir: str, step=None, num_samples: int = 10_000, batch_size: int = 250, steps=None, seed=0,
                 inception_weights=None, ref_stats_path=None, ref_images_from_data=0, progress=False,
                 inception_preprocessing=None):
  """Samples a run's checkpoint and evaluates it with the run's evaluator (gendistill.evaluation.make_evaluator);
  the Inception arguments, when given, replace the run's eval.inception_weights / ref_stats / ref_images.
  Every argument and file is checked before anything is restored or sampled (ConfigError naming it)."""
  validation.check_eval_args(num_samples, batch_size, steps, ref_stats_path, inception_weights,
                             ref_images_from_data)
  if not workdir or not paths.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir!r} is not a directory.")
  info = ckpt_lib.read_run_info(workdir)
  if info is None:
    raise FileNotFoundError(f"{workdir} holds no gendistill run (config.json is missing).")
  config = ml_collections.ConfigDict(objectives.migrate_config(info["config"]))
  if not inception_weights and config.eval.get("ref_stats"):   # the run's own reference, checked before sampling
    problem = validation.ref_stats_problem(config.eval.ref_stats)
    if problem:
      raise validation.ConfigError(f"eval.ref_stats = {config.eval.ref_stats!r} of the run: expected {problem}")
  steps = steps or None
  spec = DataSpec(**{**info["spec"], "shape": tuple(info["spec"]["shape"])})
  dataset = data_lib.build(config.data)
  objective = objectives.build(config, spec)
  # Sampling never uses the teacher: its shapes (from the run's network section) rebuild the state, so a
  # student is evaluated without its teacher's workdir.
  teacher = teachers.abstract_for_run(config, spec)
  # Sampling and Inception features run sharded over the run's mesh (all devices by default).
  mesh_config = config.get("mesh")
  mesh = sharding.make_mesh(mesh_config)
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, mesh_config)
    state = ckpt_lib.restore_state(workdir, objective, spec, step=step, teacher=teacher, mesh=mesh,
                                   rules=mesh_config)
    eval_config = config.eval
    if inception_weights:
      eval_config.update(inception_weights=inception_weights, ref_stats=ref_stats_path or "",
                         ref_images=ref_images_from_data, inception_batch_size=min(batch_size, 100))
    if inception_preprocessing:
      eval_config.inception_preprocessing = inception_preprocessing
    evaluator = evaluation.make_evaluator(
        dataset, eval_config, sharded.batch_sharding if jax.process_count() == 1 else None, progress=progress)
    t0 = time.time()
    samples, labels = train.generate(objective, state, jax.random.key(seed), num_samples, batch_size,
                                     spec.num_classes, steps, sharded=sharded, progress=progress)
  results = {"step": int(state.step), "num_samples": num_samples, "sampling_seconds": time.time() - t0}
  if evaluator is not None:
    results.update(evaluator(samples, labels))
  paths.write_text(paths.join(workdir, "eval", f"step_{results['step']:08d}.json"), json.dumps(results, indent=2))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()
  try:
    results = evaluate_run(_WORKDIR.value, _CHECKPOINT.value, _NUM.value, _BATCH.value, _STEPS.value,
                           _SEED.value, _WEIGHTS.value, _REF_STATS.value, _REF_FROM_DATA.value, progress=True,
                           inception_preprocessing=_PREPROCESSING.value)
  except train.CLEAR_ERRORS as e:   # the message says it all; no traceback
    sys.exit(f"error: {e}")
  logging.info("%s", results)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
