"""Which network's start decides a score student's fixed point on a toy mixture: the generator's or the fake
score's? A two-network student (dmd, sid, ...) from its toy2d preset on family:SEED, with each of its two networks
started either from random weights or from the EDM network of the same mixture (experiments/toy_family.py
--init=edm trains and caches it), trained by the objective's own train_step for the preset's steps in a plain
loop, then scored as in experiments/toy_family.py (one step, over the same draws). Appends a JSON line per run to
--out and prints a row.

    .venv/bin/python experiments/toy_init_split.py --objective=dmd --seed=6 --starts=rr,ee,re,er

`--starts`: generator then fake score, r = random weights, e = the EDM network (ee is --init=edm), o = the EDM
network of another tuning mixture (`--other_seed`). Each start is made by the objective's own `init` (with or
without a network to start from); a mixed start takes each role's parameters and EMA from one of them (their
optimizer states are both at Adam's zero init). Every start trains with the settings the preset gives a start
from a network (`init=DIR`), so that only the start differs; where a preset sets other rates for random weights
(dmd, dmd2, f-distill, cd, sCT since 2026-12-01), rr is therefore not the shipped random-weights preset. The rows
in experiments/results/toy_init_split.jsonl predate that split: then both starts had dmd's generator lr 2e-4.
"""
import argparse
import copy
import json
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import toy_family  # noqa: E402  (sets the compilation cache and CPU flags before jax starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from gendistill import data as data_lib  # noqa: E402
from gendistill import objectives, teachers, train  # noqa: E402
from gendistill.objectives import score_common as sc  # noqa: E402


def mixed_state(state_g, state_f):
  """The generator's parameters and EMA from state_g, the fake score's from state_f."""
  params = {**state_f.params, sc.GENERATOR: state_g.params[sc.GENERATOR]}
  ema = {**state_f.ema, sc.GENERATOR: state_g.ema[sc.GENERATOR]} if sc.GENERATOR in state_g.ema else state_f.ema
  return state_f.replace(params=params, ema=ema)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--objective", default="dmd")
  p.add_argument("--seed", type=int, default=6)
  p.add_argument("--starts", default="rr,ee,re,er")
  p.add_argument("--other_seed", type=int, default=-1,
                 help="start 'o': the EDM network of this other tuning mixture (trained if not cached)")
  p.add_argument("--steps", type=int, default=0, help="override the preset's train.num_steps (0: as shipped)")
  p.add_argument("--draws", type=int, default=5)
  p.add_argument("--num_samples", type=int, default=4000)
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "toy_init_split.jsonl"))
  args = p.parse_args()
  for name, seed in (("seed", args.seed), ("other_seed", args.other_seed)):
    if seed not in toy_family.TUNING_SEEDS and not (name == "other_seed" and seed < 0):
      raise SystemExit(f"--{name}={seed} is not a tuning seed {toy_family.TUNING_SEEDS}: diagnose on those only.")
  fam = types.SimpleNamespace(draws=args.draws, num_samples=args.num_samples, edm_steps=0, set=[],
                              workdir=os.path.join(ROOT, "workdirs", "toy_family"))
  mixture = toy_family.Mixture(args.seed, fam)
  edm_config, edm_dir = toy_family.edm_config(args.seed, fam)
  train.train_and_evaluate(edm_config, edm_dir)   # cached: a finished run returns at once

  config = toy_family.run_config(args.objective, args.seed, "edm", fam)
  if args.steps:
    config.train.num_steps = args.steps
  dataset = data_lib.build(config.data)
  teacher = teachers.build(config.teacher, dataset, config.network)               # the exact mixture denoiser
  teacher_init = teachers.with_init_network(teacher, config.teacher)               # + the EDM network to start from
  objective = objectives.build(config, dataset.spec)
  random_config = copy.deepcopy(config)
  random_config.objective[args.objective].init = "random"   # init='teacher' refuses the analytic teacher
  init_random = jax.jit(objectives.build(random_config, dataset.spec).init)
  batches = dataset.iterator()
  batch = next(batches)
  key = jax.random.key(config.seed)
  start = {"e": jax.jit(objective.init)(key, batch, teacher_init), "r": init_random(key, batch, teacher)}
  if args.other_seed >= 0:
    other_config, other_dir = toy_family.edm_config(args.other_seed, fam)
    train.train_and_evaluate(other_config, other_dir)
    other = copy.deepcopy(config.teacher)
    other.init_workdir = other_dir
    start["o"] = jax.jit(objective.init)(key, batch, teachers.with_init_network(teacher, other))
  step_fn = jax.jit(objective.train_step, donate_argnums=0)
  sample = jax.jit(objective.sample, static_argnums=(2, 4))

  for starts in args.starts.split(","):
    state = mixed_state(start[starts[0]], start[starts[1]])
    state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)  # step_fn donates it
    t0 = time.time()
    batches = dataset.iterator()
    for _ in range(int(config.train.num_steps)):
      state, metrics = step_fn(state, next(batches), teacher)
    finite = bool(np.all([np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics)]))
    seconds = time.time() - t0
    samples = [np.asarray(sample(state, k, args.num_samples, None, 1)) for k in mixture.keys]
    s = toy_family.summarise(mixture.score(samples), mixture.teacher_draws)
    row = {"objective": args.objective, "seed": args.seed, "other_seed": args.other_seed,
           "generator_start": starts[0], "fake_score_start": starts[1],
           "steps": int(config.train.num_steps), "seconds": seconds, "finite": finite,
           **{k: s[k] for k in ("ratio_mean", "ratio_std", "modes_min", "num_modes", "near", "tv", "thin")}}
    print(f"{args.objective} family:{args.seed} G {starts[0]} F {starts[1]}: SW/teacher {s['ratio_mean']:.2f} +- "
          f"{s['ratio_std']:.2f}, modes {s['modes_min']}/{s['num_modes']}, near {s['near']:.3f}, TV {s['tv']:.3f}, "
          f"widest thin axis {s['thin']:.2f}x ({seconds:.0f} s)", flush=True)
    with open(args.out, "a") as f:
      f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
