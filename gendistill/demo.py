"""`make demo`: the embedded end-to-end run, no download.

1. Trains a small class-conditional EDM teacher on the scikit-learn digits (configs/edm.py:digits), or reuses the
   one already in WORKDIR/teacher; its final evaluation samples it with Heun at NFE 35.
2. Distils it into a one-step generator with SiD (configs/sid.py:digits) for --student_steps steps (0: skip) in
   WORKDIR/sid. Compiling SiD's step takes minutes on a CPU; it is compiled in a thread while the teacher trains.
3. Writes the report into WORKDIR: report.json (digits FD and class accuracy of the teacher at NFE 35, of the
   one-step student and of real digits, the metric's floor; times), sample grids (one column per class) and loss
   curves.

Both stages are ordinary runs of gendistill.train: they resume when interrupted and `python -m gendistill.evaluate`
works on them.
"""
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

from absl import app, flags, logging

import gendistill  # noqa: F401  (CPU flags before jax starts)
import jax

from gendistill import data as data_lib
from gendistill import evaluation
from gendistill import teachers
from gendistill import train

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Where the runs and the report go.")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", None, "Override the teacher's training steps.")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", 200, "SiD's training steps (0: no distillation).")
_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Samples for the digits FD and class accuracy.")


def stage_configs(workdir: str):
  """(teacher config, student config) of the demo; the student reads the teacher from WORKDIR/teacher."""
  from configs import edm, sid  # pylint: disable=g-import-not-at-top
  teacher = edm.get_config("digits")
  student = sid.get_config(f"digits,teacher={os.path.join(workdir, 'teacher')}")
  if _TEACHER_STEPS.value:
    teacher.train.num_steps = _TEACHER_STEPS.value
  if _STUDENT_STEPS.value is not None:
    sid.set_digits_steps(student, _STUDENT_STEPS.value)
  for c in (teacher, student):
    c.eval.num_samples = _SAMPLES.value
  return teacher, student


def final_eval(run_dir: str) -> dict:
  """The last evaluation the loop logged (eval/* at the final step), without the prefix."""
  rows = [r for r in train.read_metrics(run_dir) if "eval/digits_fd" in r]
  if not rows:
    raise RuntimeError(f"{run_dir} has no evaluation in metrics.jsonl")
  return {"step": rows[-1]["step"], **{k[len("eval/"):]: v for k, v in rows[-1].items() if k.startswith("eval/")}}


def final_grid(run_dir: str, path: str):
  grids = sorted(os.listdir(os.path.join(run_dir, "samples")))
  shutil.copyfile(os.path.join(run_dir, "samples", grids[-1]), path)


def plot_loss(run_dir: str, keys, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
  for ax, key in zip(axes[0], keys):
    rows = [r for r in train.read_metrics(run_dir) if key in r]
    ax.plot([r["step"] for r in rows], [r[key] for r in rows])
    ax.set_xlabel("step")
    ax.set_title(key)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_stage(name: str, config, run_dir: str, report: dict, compiled_step=None):
  print(f"[demo] {name}: {config.objective.name} for {config.train.num_steps} steps in {run_dir}", flush=True)
  t0 = time.time()
  train.train_and_evaluate(config, run_dir, compiled_step)
  report[name] = {"train_steps": config.train.num_steps, "run_seconds": round(time.time() - t0, 1),
                  **final_eval(run_dir)}
  print(f"[demo] {name}: {json.dumps(report[name])}", flush=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # orbax logs every checkpoint at INFO; the stages print their own lines
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  report = {"jax_backend": jax.default_backend(), "devices": jax.device_count()}
  teacher_config, student_config = stage_configs(workdir)

  # Compiling the SiD step takes minutes on a CPU: do it in a thread while the teacher trains (compilation
  # releases the GIL) and hand the compiled step to the SiD stage; the persistent cache serves reruns.
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  ahead = None
  if student_config.train.num_steps:
    spec = data_lib.build(teacher_config.data).spec
    ahead = ThreadPoolExecutor(1).submit(train.compile_ahead, student_config,
                                         teachers.abstract(teacher_config, spec))

  teacher_dir = os.path.join(workdir, "teacher")
  run_stage("teacher_heun_nfe35", teacher_config, teacher_dir, report)
  final_grid(teacher_dir, os.path.join(workdir, "teacher_heun_nfe35.png"))
  plot_loss(teacher_dir, ["denoiser/loss"], os.path.join(workdir, "teacher_loss.png"))

  if ahead is not None:
    t0 = time.time()
    compiled_step = ahead.result()
    print(f"[demo] waited {time.time() - t0:.0f} s for the SiD step's compilation", flush=True)
    student_dir = os.path.join(workdir, "sid")
    run_stage("sid_one_step", student_config, student_dir, report, compiled_step)
    final_grid(student_dir, os.path.join(workdir, "sid_one_step.png"))
    plot_loss(student_dir, ["generator/loss", "fake_score/loss"], os.path.join(workdir, "sid_loss.png"))

  real = data_lib.build(teacher_config.data).reference(_SAMPLES.value)
  report["real_digits"] = evaluation.digits_metrics(real["image"], real["label"])  # the metric's floor
  report["total_seconds"] = round(time.time() - t_start, 1)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  print(f"Report, grids and loss curves in {workdir}")


if __name__ == "__main__":
  app.run(main)
