"""Benchmark of trajectory distillation: consistency models (cd, ect, ict; ct on request) and progressive
distillation, 1- and 2-step (PD: 1-, 2- and 4-step) students against the teacher's Heun NFE 35.

--bench=toy2d (default): 2-D Gaussian mixtures (8-ring and 5x5 grid, unequal weights) with the analytic teacher
(the exact denoiser). Each objective runs its `toy2d` preset; CD, ECT and PD start from an MLP denoiser trained with
the `edm` objective on the mixture (`--init=pretrained`, as the methods start from a pretrained diffusion model:
the analytic teacher has no network to copy), iCT/CT learn from data alone (random start). Metrics
(gendistill.evaluation.toy_metrics) on `--num_samples` samples against as many fresh samples of the mixture: MMD^2,
sliced Wasserstein-2, modes covered, total variation of the mode weights.
--bench=digits: the embedded 16x16 digits with the `edm` teacher in `--teacher` (default workdirs/demo/teacher,
made by `make demo`); the students start from it (iCT/CT from random weights); digits FD and class accuracy.

Consistency models are evaluated at the end of training with 1 and 2 steps (sampler levels from the preset:
80 and 0.821); PD at the end of the rounds whose students take 4, 2 and 1 steps. Writes <out>.md and <out>.json
(default experiments/trajectory_distillation.*), the command at the top of the table.

    .venv/bin/python experiments/trajectory_distillation.py                          # toy2d, preset lengths
    .venv/bin/python experiments/trajectory_distillation.py --steps=300 --num_samples=2000   # a quick check
    .venv/bin/python experiments/trajectory_distillation.py --bench=digits --teacher=workdirs/demo/teacher
"""
import argparse
import importlib
import json
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gendistill  # noqa: E402,F401  (CPU flags before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gendistill import data as data_lib  # noqa: E402
from gendistill import objectives, teachers  # noqa: E402
from gendistill.diffusion import samplers  # noqa: E402
from gendistill.objectives import progressive as pd  # noqa: E402
from gendistill.objectives.base import example_batch, sample_labels  # noqa: E402

OBJECTIVES = ("cd", "ect", "ict", "progressive")
MIXTURES = ("ring8_unequal", "grid25_unequal")
FROM_TEACHER = ("cd", "ect", "progressive")     # the methods that start from a pretrained diffusion model
PD_EVAL_STEPS = (4, 2, 1)


# ------------------------------------------------------------------------------------------------------------
# Metrics.


def toy_metrics(samples, reference, mixture):
  from gendistill.evaluation import toy_metrics as tm  # pylint: disable=g-import-not-at-top
  m = tm(samples, reference, mixture)
  return {k: float(np.asarray(v)) for k, v in m.items() if np.ndim(v) == 0}


def digits_metrics(samples, labels):
  from gendistill import evaluation  # pylint: disable=g-import-not-at-top
  return evaluation.digits_metrics(samples, labels)


class Bench:
  """Data, teacher, reference metrics and the evaluator of one benchmark setting (a mixture, or digits)."""

  def __init__(self, args, mixture=None):
    self.args, self.mixture = args, mixture
    self.toy = args.bench == "toy2d"
    if self.toy:
      self.mix = data_lib.toy2d.mixture(mixture)
      self.reference = self.mix.sample(args.num_samples, seed=12345)
      self.teacher = teachers.gaussian_mixture(self.mix.weights, self.mix.means, self.mix.covs)
      self.shape, self.num_classes = (2,), 0
    else:
      self.teacher = teachers.from_workdir(args.teacher)
      self.shape, self.num_classes = (16, 16, 1), 10
    self.labels = np.arange(args.num_samples) % self.num_classes if self.num_classes else None

  def evaluate(self, samples):
    samples = np.asarray(samples)
    if self.toy:
      return toy_metrics(samples, self.reference, self.mix)
    return digits_metrics(samples, self.labels)

  def references(self):
    """The teacher's Heun NFE 35 (and, on toy2d, fresh true samples: the metrics' noise floor)."""
    n = self.args.num_samples
    onehot = sample_labels(None, n, None if self.labels is None else jnp.asarray(self.labels), self.num_classes)
    fn = jax.jit(lambda z: samplers.heun_sampler(self.teacher.denoise_fn(onehot), z, num_steps=18))
    t0 = time.time()
    heun = np.asarray(fn(jax.random.normal(jax.random.key(self.args.seed), (n,) + self.shape)))
    out = {"teacher_heun_nfe35": {**self.evaluate(heun), "seconds": time.time() - t0}}
    if self.toy:
      out["true_samples"] = self.evaluate(self.mix.sample(n, seed=54321))
    return out


# ------------------------------------------------------------------------------------------------------------
# Training.


def pretrained_denoiser(mixture, args):
  """An MLP denoiser trained with the `edm` objective on the mixture, cached in a workdir (shared with
  experiments/toy_score_distillation.py when its run exists): the network CD, ECT and PD start from."""
  from configs import edm as edm_config  # pylint: disable=g-import-not-at-top
  from gendistill import train  # pylint: disable=g-import-not-at-top
  for base in (os.path.join(ROOT, "workdirs", "toy_score_distillation"), args.workdir):
    workdir = os.path.join(base, f"edm_{mixture}")
    if os.path.exists(os.path.join(workdir, f"done_{args.pretrain_steps}")):
      return teachers.from_workdir(workdir).params, 0.0
  config = edm_config.get_config("toy2d")
  config.data.toy2d_kind = mixture
  config.train.update(num_steps=args.pretrain_steps, sample_every=0, checkpoint_every=args.pretrain_steps)
  config.eval.update(num_samples=2000, batch_size=2000)
  t0 = time.time()
  train.train_and_evaluate(config, workdir)
  open(os.path.join(workdir, f"done_{args.pretrain_steps}"), "w").close()
  return teachers.from_workdir(workdir).params, time.time() - t0


def set_key(config, key, value):
  node = config
  *path, leaf = key.split(".")
  for part in path:
    node = node[part]
  node[leaf] = value if isinstance(node[leaf], str) else type(node[leaf])(json.loads(value))


def make_config(name, bench, args):
  module = importlib.import_module(f"configs.{name}")
  if bench.toy:
    arg = "toy2d" + (",grid25" if bench.mixture.startswith("grid25") else "")
  else:
    arg = f"digits,teacher={args.teacher}"
  config = module.get_config(arg)
  config.seed = args.seed
  o = config.objective[name]
  if args.steps:
    if name == "progressive":
      o.steps_per_round = max(args.steps // pd.num_rounds(o.teacher_steps, o.final_steps), 1)
      config.train.num_steps = o.steps_per_round * pd.num_rounds(o.teacher_steps, o.final_steps)
    else:
      config.train.num_steps = args.steps
      if name == "ect":   # keep the preset's number of stages
        o.stage_steps = max(o.stage_steps * args.steps // module.get_config(arg).train.num_steps, 1)
  for item in args.set:
    key, value = item.split("=", 1)
    if key.startswith(f"{name}."):
      set_key(o, key[len(name) + 1:], value)
    elif "." in key and key.split(".")[0] not in objectives.names():
      set_key(config, key, value)
  return config


def eval_points(name, config):
  """{completed steps: [sampler steps]} at which to evaluate."""
  if name != "progressive":
    return {config.train.num_steps: [1, 2]}
  o = config.objective.progressive
  rounds = pd.num_rounds(o.teacher_steps, o.final_steps)
  points = {}
  for r in range(rounds):
    n = o.teacher_steps >> (r + 1)
    if n in PD_EVAL_STEPS:
      points[(r + 1) * o.steps_per_round] = [n]
  return points


def run_one(name, bench, args, init_params=None):
  config = make_config(name, bench, args)
  dataset = data_lib.build(config.data)
  teacher = teachers.device_put(bench.teacher if not bench.toy or config.teacher.source != "none" else None)
  objective = objectives.build(config, dataset.spec)
  state = jax.jit(objective.init)(jax.random.key(config.seed), example_batch(dataset.spec), teacher)
  g = objective.export_role
  if init_params is not None and name in FROM_TEACHER:   # the student (and its EMA, target) from the MLP
    copy = lambda: jax.tree.map(jnp.array, init_params)
    state = state.replace(params={**state.params, g: copy()},
                          ema={k: copy() for k in state.ema},
                          extra={k: copy() for k in state.extra})
  step_fn = jax.jit(objective.train_step, donate_argnums=0)
  sample = jax.jit(objective.sample, static_argnums=(2, 4))
  it = dataset.iterator()
  points = eval_points(name, config)
  rows, train_seconds, compile_seconds = [], 0.0, None
  labels = None if bench.labels is None else jnp.asarray(bench.labels)
  for step in range(config.train.num_steps):
    t0 = time.time()
    state, metrics = step_fn(state, next(it), teacher)
    if compile_seconds is None:
      jax.block_until_ready(state)
      compile_seconds = time.time() - t0
    else:
      train_seconds += time.time() - t0
    if step + 1 in points:
      jax.block_until_ready(state)
      loss = float(metrics[f"{g}/loss"])
      for steps in points[step + 1]:
        samples = []
        for i, start in enumerate(range(0, args.num_samples, args.eval_batch)):
          n = min(args.eval_batch, args.num_samples - start)
          lab = None if labels is None else labels[start:start + n]
          samples.append(np.asarray(sample(state, jax.random.key(10_000 + i), n, lab, steps)))
        m = bench.evaluate(np.concatenate(samples))
        row = {"objective": name, "setting": bench.mixture or "digits", "sampler_steps": steps, "train_steps": step + 1,
               "train_seconds": train_seconds, "compile_seconds": compile_seconds, "loss": loss, **m}
        rows.append(row)
        summary = (f"mmd2 {m['mmd2']:.2e} sw {m['sliced_wasserstein']:.4f} modes "
                   f"{m['num_modes_covered']:.0f}/{m['num_modes']:.0f}" if bench.toy else
                   f"fd {m['digits_fd']:.2f} acc {m.get('class_accuracy', float('nan')):.3f}")
        print(f"  {name:12s} {row['setting']:15s} {steps}-step after {step + 1:6d} steps: {summary} "
              f"({train_seconds:.0f}s)", flush=True)
  return rows


# ------------------------------------------------------------------------------------------------------------
# The table.


def write(args, refs, results, command):
  with open(args.out + ".json", "w") as f:
    json.dump({"command": command, "args": vars(args), "references": refs, "results": results}, f, indent=1)
  toy = args.bench == "toy2d"
  lines = ["# Trajectory distillation benchmark: consistency models and progressive distillation", "",
           f"Command: `{command}`", "",
           ("Toy 2-D mixtures with the analytic teacher (the exact denoiser). " if toy else
            f"Digits 16x16 with the `edm` teacher in `{args.teacher}`. ") +
           f"{args.num_samples} samples per row. " +
           ("Metrics: unbiased MMD^2 (multi-bandwidth RBF), sliced Wasserstein-2, modes covered, total variation of "
            "the mode weights, against as many fresh samples of the mixture. " if toy else
            "Metrics: digits FD (Frechet distance of the digits classifier's features) and class accuracy. ") +
           ("CD, ECT and PD start from an MLP denoiser trained with `edm` on the mixture "
            f"({args.pretrain_steps} steps); iCT/CT from random weights. " if toy and args.init == "pretrained" else
            "") +
           "Each objective runs its preset " + (f"for {args.steps} steps (PD: the rounds share them)" if args.steps
                                               else "for its own number of steps") +
           "; consistency models sample with 1 and 2 steps at the end, PD students are evaluated at the end of the "
           "rounds whose students take 4, 2 and 1 DDIM steps. Wall times on a 2-core CPU shared with other jobs.", ""]
  for setting, ref in refs.items():
    t = ref["teacher_heun_nfe35"]
    lines += [f"## {setting}", ""]
    if toy:
      s = ref["true_samples"]
      lines += [f"Teacher Heun NFE 35: MMD^2 {t['mmd2']:.2e}, SW {t['sliced_wasserstein']:.4f}, modes "
                f"{t['num_modes_covered']:.0f}/{t['num_modes']:.0f}, mode TV {t['mode_weights_tv']:.3f}. Fresh true "
                f"samples: MMD^2 {s['mmd2']:.2e}, SW {s['sliced_wasserstein']:.4f}.", "",
                "| objective | NFE | MMD^2 | SW | SW / teacher | modes | mode TV | train steps | train s |",
                "|---|---|---|---|---|---|---|---|---|"]
    else:
      lines += [f"Teacher Heun NFE 35: digits FD {t['digits_fd']:.2f}, class accuracy "
                f"{t.get('class_accuracy', float('nan')):.3f}.", "",
                "| objective | NFE | digits FD | class accuracy | train steps | train s |", "|---|---|---|---|---|---|"]
    for r in results:
      if r["setting"] != setting:
        continue
      if toy:
        lines.append(f"| {r['objective']} | {r['sampler_steps']} | {r['mmd2']:.2e} | {r['sliced_wasserstein']:.4f} | "
                     f"{r['sliced_wasserstein'] / t['sliced_wasserstein']:.2f} | {r['num_modes_covered']:.0f}/"
                     f"{r['num_modes']:.0f} | {r['mode_weights_tv']:.3f} | {r['train_steps']} | "
                     f"{r['train_seconds']:.0f} |")
      else:
        lines.append(f"| {r['objective']} | {r['sampler_steps']} | {r['digits_fd']:.2f} | "
                     f"{r.get('class_accuracy', float('nan')):.3f} | {r['train_steps']} | {r['train_seconds']:.0f} |")
    lines.append("")
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--bench", default="toy2d", choices=("toy2d", "digits"))
  parser.add_argument("--objectives", default=",".join(OBJECTIVES), help="any of cd, ct, ict, ect, progressive")
  parser.add_argument("--mixtures", default=",".join(MIXTURES))
  parser.add_argument("--steps", type=int, default=0, help="train steps of every objective (0: the presets')")
  parser.add_argument("--num_samples", type=int, default=10_000)
  parser.add_argument("--eval_batch", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--init", default="pretrained", choices=("pretrained", "random"),
                      help="toy2d: CD/ECT/PD from an MLP EDM denoiser trained on the mixture, or random")
  parser.add_argument("--pretrain_steps", type=int, default=4000)
  parser.add_argument("--teacher", default=os.path.join("workdirs", "demo", "teacher"), help="digits teacher run")
  parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "trajectory_distillation"))
  parser.add_argument("--set", action="append", default=[],
                      help="override NAME.KEY=VALUE of an objective (e.g. cd.num_scales=40) or a config key "
                           "(e.g. data.batch_size=128); JSON values; repeatable")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if not args.out:
    args.out = os.path.join(ROOT, "experiments", "trajectory_distillation" + ("" if args.bench == "toy2d"
                                                                                 else "_digits"))
  if args.bench == "digits":
    args.eval_batch = min(args.eval_batch, 500)
  command = " ".join([".venv/bin/python", "experiments/trajectory_distillation.py"] +
                     [shlex.quote(a) for a in sys.argv[1:]])
  refs, results = {}, []
  settings = args.mixtures.split(",") if args.bench == "toy2d" else [None]
  for mixture in settings:
    bench = Bench(args, mixture)
    name = mixture or "digits"
    refs[name] = bench.references()
    print(f"{name}: teacher Heun NFE 35 {refs[name]['teacher_heun_nfe35']}", flush=True)
    init_params = None
    if bench.toy and args.init == "pretrained":
      init_params, seconds = pretrained_denoiser(mixture, args)
      refs[name]["pretrain_seconds"] = seconds
    for objective in args.objectives.split(","):
      results += run_one(objective, bench, args, init_params)
      write(args, refs, results, command)   # after every run, so that a partial benchmark keeps what it has
  write(args, refs, results, command)


if __name__ == "__main__":
  main()
