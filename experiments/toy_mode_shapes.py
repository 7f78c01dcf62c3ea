"""Per-component shape of a toy_family run's one-step samples: where its sliced W2 comes from.

The toy_family table gives one width per run (the widest mode across its narrowest axis). This script takes one
finished run of experiments/toy_family.py (the same --objectives/--seeds/--init/--set select its workdir; a missing
run is trained first) and prints, for the exact analytic teacher's Heun NFE-35 samples and the student's, per
component: its true weight and the share of samples nearest to it (within 6 Mahalanobis units), the offset of
their mean along the component's two principal axes in true stds, and their std along each axis as a multiple
of the true std (1x is exact), pooled over the toy_family draws; and whether the samples far from every mode set
the run's sliced W2. Writes OUT.md with the command.

    .venv/bin/python experiments/toy_mode_shapes.py --objective=dmd --seed=100 --init=random \\
        --out=experiments/results/toy_mode_shapes_dmd_100
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import toy_family  # noqa: E402  (sets the JAX cache and the CPU flags before jax starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from gendistill import data as data_lib  # noqa: E402
from gendistill import objectives, teachers, train  # noqa: E402
from gendistill.evaluation.toy_metrics import mahalanobis_distances, sliced_wasserstein  # noqa: E402

WINDOW = 6.0   # as toy_metrics.thin_axis_widths: samples between modes do not set a mode's shape


def mode_shapes(x, mix):
  """Rows (weight, share, offset thin/long, width thin/long) per component; the fractions of samples within 3
  std of a mode and farther than WINDOW from every mode."""
  r = mahalanobis_distances(x, mix.means, mix.covs)
  nearest, dist = r.argmin(1), r.min(1)
  rows = []
  for k in range(len(mix.weights)):
    mine = x[(nearest == k) & (dist <= WINDOW)] - mix.means[k]
    values, vectors = np.linalg.eigh(mix.covs[k])   # ascending: thin axis first
    std = np.sqrt(values)
    if len(mine) < 20:
      rows.append((mix.weights[k], len(mine) / len(x), None, None))
      continue
    along = mine @ vectors
    rows.append((mix.weights[k], len(mine) / len(x), along.mean(0) / std, along.std(0) / std))
  return rows, float(np.mean(dist <= 3.0)), float(np.mean(dist > WINDOW))


def table(name, rows, near, stray):
  lines = [f"**{name}** (near-mode fraction {near:.3f}; farther than {WINDOW:g} std from every mode {stray:.4f})", "",
           "| component | weight | share | offset / std (thin, long) | width x (thin, long) |",
           "|---|---|---|---|---|"]
  for k, (w, share, offset, width) in enumerate(rows):
    if offset is None:
      lines.append(f"| {k} | {w:.3f} | {share:.3f} | - | - |")
    else:
      lines.append(f"| {k} | {w:.3f} | {share:.3f} | {offset[0]:+.2f}, {offset[1]:+.2f} | "
                   f"{width[0]:.2f}x, {width[1]:.2f}x |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--objective", required=True, choices=toy_family.OBJECTIVES)
  parser.add_argument("--seed", type=int, required=True, help="the family member (data.toy2d_kind=family:SEED)")
  parser.add_argument("--init", choices=("random", "edm"), default="random")
  parser.add_argument("--set", action="append", default=[], help="as toy_family.py's --set")
  parser.add_argument("--draws", type=int, default=5)
  parser.add_argument("--num_samples", type=int, default=4000)
  parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "toy_family"))
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  args.edm_steps = 0
  mix = toy_family.toy2d.family(args.seed)
  if args.init == "edm":
    toy_family.edm_workdir(toy_family.Mixture(args.seed, args), args)
  config = toy_family.run_config(args.objective, args.seed, args.init, args)
  workdir = toy_family.run_workdir(args.objective, argparse.Namespace(kind=f"family:{args.seed}"), config, args)
  state = train.train_and_evaluate(config, workdir)   # restores a finished run
  objective = objectives.build(config, data_lib.build(config.data).spec)
  sample = jax.jit(objective.sample, static_argnums=(2, 4))
  keys = [jax.random.key(d) for d in range(args.draws)]   # toy_family's draws
  student_draws = [np.asarray(sample(state, k, args.num_samples, None, 1)) for k in keys]
  teacher = teachers.gaussian_mixture(mix.weights, mix.means, mix.covs)
  heun_draws = [toy_family.heun_samples(teacher, args.num_samples, k) for k in keys]
  student, heun = np.concatenate(student_draws), np.concatenate(heun_draws)
  # Do the stray samples set the sliced W2? Each draw's SW to toy_family's reference of that draw, as is and with
  # the student's samples farther than WINDOW from every mode replaced by that many of the teacher's.
  sw = {"teacher": [], "student": [], "strays replaced": []}
  for d, (x, t) in enumerate(zip(student_draws, heun_draws)):
    reference = mix.sample(args.num_samples, toy_family.REFERENCE_SEED + d)
    kept = x[mahalanobis_distances(x, mix.means, mix.covs).min(1) <= WINDOW]
    for name, points in (("teacher", t), ("student", x), ("strays replaced", np.vstack([kept, t[len(kept):]]))):
      sw[name].append(sliced_wasserstein(points, reference))
  command = "python experiments/toy_mode_shapes.py " + " ".join(sys.argv[1:])
  text = "\n\n".join([
      f"# Per-component shapes: {args.objective} ({args.init}) on family:{args.seed}",
      f"Command: `{command}`; run {toy_family.relative(workdir)} (config {toy_family.config_hash(config)}), "
      f"{args.draws} draws of {args.num_samples} pooled. Components ordered as the family's (the last is its far "
      f"mode); axes: the true covariance's principal axes, thin first.",
      "Sliced W2 (256 projections) to each draw's reference, mean over the draws: " + ", ".join(
          f"{name} {np.mean(v):.4f}" for name, v in sw.items()) + " (the student's strays replaced by the teacher's "
      f"samples of the same draw).",
      table("teacher (analytic, Heun NFE 35)", *mode_shapes(heun, mix)),
      table(f"{args.objective}, one step", *mode_shapes(student, mix))]) + "\n"
  print(text)
  with open(args.out + ".md", "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
