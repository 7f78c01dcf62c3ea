"""Diagnosis runs for issue 18's collapses: one objective's toy2d preset on an anisotropic test mixture (or a
built-in kind), from random weights, with the exact analytic teacher, logging over training the sample scatter
(mean, std, fraction near a mode), sliced W2 against the teacher's Heun NFE-35 samples' own SW, modes found and
the objective's loss terms. Prints one line per evaluation and appends a JSON line per run to --out.

    .venv/bin/python experiments/toy_collapse.py --objective=ct --mixture=aniso6
    .venv/bin/python experiments/toy_collapse.py --objective=sid --set=objective.sid.alpha=1.2 --steps=1500

`aniso6` is the diagnosis mixture of this study: 6 components with unequal weights, rotated anisotropic
covariances and a small far mode (the shape of mixture issue 18 measured; not one of the tuning or held-out
seeds of experiments/toy_family).
"""
import argparse
import importlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gendistill  # noqa: E402,F401  (CPU flags before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from gendistill import data as data_lib  # noqa: E402
from gendistill import objectives, teachers  # noqa: E402
from gendistill.data import toy2d  # noqa: E402
from gendistill.diffusion import samplers  # noqa: E402
from gendistill.evaluation import toy_metrics  # noqa: E402
from gendistill.objectives.base import example_batch  # noqa: E402


def _rotated(std_major, std_minor, angle):
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  return rot @ np.diag([std_major**2, std_minor**2]) @ rot.T


def aniso6() -> toy2d.GaussianMixture:
  """6 components, unequal weights, rotated anisotropic covariances (axis ratios up to 6), a small far mode."""
  weights = np.array([0.28, 0.22, 0.18, 0.15, 0.12, 0.05])
  means = np.array([[-1.0, 0.6], [0.2, 1.1], [1.1, 0.1], [-0.4, -0.9], [0.7, -1.2], [3.2, 2.6]])
  covs = np.stack([_rotated(0.30, 0.06, 0.3), _rotated(0.25, 0.05, 1.9), _rotated(0.20, 0.08, -0.7),
                   _rotated(0.35, 0.07, 1.0), _rotated(0.15, 0.10, 2.5), _rotated(0.10, 0.04, 0.8)])
  return toy2d.GaussianMixture(weights=weights, means=means, covs=covs)


def get_mixture(name):
  if name == "aniso6":
    return aniso6()
  if name.startswith("family:"):   # the seeded family of experiments/toy_family (tune on its tuning seeds only)
    return toy2d.family(int(name.split(":", 1)[1]))
  return toy2d.mixture(name)


def heun_samples(teacher, num, seed, num_steps=18):
  fn = jax.jit(lambda z: samplers.heun_sampler(teacher.denoise_fn(), z, num_steps=num_steps))
  return np.asarray(fn(jax.random.normal(jax.random.key(seed), (num, 2))))


def scatter(x):
  x = np.asarray(x, np.float64)
  return {"mean_x": float(x[:, 0].mean()), "mean_y": float(x[:, 1].mean()), "std_x": float(x[:, 0].std()),
          "std_y": float(x[:, 1].std()), "nonfinite": int((~np.isfinite(x)).any(axis=1).sum())}


def evaluate(samples, mix, reference):
  samples = np.nan_to_num(np.asarray(samples), nan=1e3, posinf=1e3, neginf=-1e3)
  m = toy_metrics(samples, reference, mix, max_pairwise=2000)
  return {"sw": float(m["sliced_wasserstein"]), "modes": int(m["num_modes_covered"]),
          "near": float(m["high_quality_fraction"]), "tv": float(m["mode_weights_tv"]), **scatter(samples)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--objective", required=True)
  p.add_argument("--preset", default="toy2d")
  p.add_argument("--mixture", default="aniso6")
  p.add_argument("--steps", type=int, default=0, help="override train.num_steps")
  p.add_argument("--eval_every", type=int, default=500)
  p.add_argument("--num_samples", type=int, default=4000)
  p.add_argument("--sample_steps", default="1", help="comma-separated sampler step counts to evaluate")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (JSON value)")
  p.add_argument("--label", default="")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "toy_collapse.jsonl"))
  p.add_argument("--save_samples", default="", help="an .npz for the final one-step samples")
  p.add_argument("--online", action="store_true",
                 help="also sample from the online parameters (the sampler uses the EMA): nfe1_online")
  p.add_argument("--probe_sigmas", default="",
                 help="comma-separated sigmas s: scores f(x + s z, s) of the sampled (EMA) network on fresh "
                      "mixture samples x (one-step denoising from level s): probe_S")
  args = p.parse_args()

  mix = get_mixture(args.mixture)
  config = importlib.import_module(f"configs.{args.objective}").get_config(args.preset)
  config.seed = args.seed
  if args.steps:
    config.train.num_steps = args.steps
  base.override(config, args.set)
  # The data path: a built-in kind's dataset gives the spec; batches are drawn here from `mix` itself.
  dataset = data_lib.build(config.data)
  teacher = teachers.device_put(teachers.gaussian_mixture(mix.weights, mix.means, mix.covs))
  objective = objectives.build(config, dataset.spec)
  reference = mix.sample(args.num_samples, seed=12345)
  teacher_sw = evaluate(heun_samples(teacher, args.num_samples, 7), mix, reference)["sw"]
  state = jax.jit(objective.init)(jax.random.key(config.seed), example_batch(dataset.spec), teacher)
  step_fn = jax.jit(objective.train_step, donate_argnums=0)
  sample = jax.jit(objective.sample, static_argnums=(2, 4))
  rng = np.random.default_rng(args.seed + 1000)
  bs = config.data.batch_size
  sample_steps = [int(s) for s in args.sample_steps.split(",")]
  probe_sigmas = [float(v) for v in args.probe_sigmas.split(",") if v]
  probe_x = jnp.asarray(mix.sample(args.num_samples, seed=4321), jnp.float32)
  probe_z = jax.random.normal(jax.random.key(4322), probe_x.shape)
  probe = jax.jit(lambda params, sigma: objective.apply_fn(params, probe_x + sigma * probe_z, sigma))
  history = []
  t0 = time.time()
  num_steps = config.train.num_steps
  print(f"{args.objective} on {args.mixture}: teacher Heun SW {teacher_sw:.4f}", flush=True)
  for step in range(num_steps):
    comp = rng.choice(len(mix.weights), size=bs, p=mix.weights / mix.weights.sum())
    chol = np.linalg.cholesky(mix.covs)
    x = (mix.means[comp] + np.einsum("nde,ne->nd", chol[comp], rng.standard_normal((bs, 2)))).astype(np.float32)
    state, metrics = step_fn(state, {"x": x}, teacher)
    if (step + 1) % args.eval_every == 0 or step + 1 == num_steps:
      row = {"step": step + 1, "seconds": round(time.time() - t0, 1),
             **{k: float(v) for k, v in jax.device_get(metrics).items()
                if np.ndim(v) == 0 and ("loss" in k or "norm" in k)}}
      evals = [(f"nfe{k}", k, state) for k in sample_steps]
      if args.online:   # the same sampler with every EMA role replaced by its online parameters
        evals.append(("nfe1_online", 1, state.replace(ema={r: state.params[r] for r in state.ema})))
      for name, k, st in evals:
        e = evaluate(sample(st, jax.random.key(99), args.num_samples, None, k), mix, reference)
        e["sw_ratio"] = e["sw"] / teacher_sw
        row[name] = e
        print(f"  step {step + 1:5d} {name}: SW/teacher {e['sw_ratio']:.2f} modes {e['modes']}/{len(mix.weights)} "
              f"near {e['near']:.2f} tv {e['tv']:.3f} mean ({e['mean_x']:.2f},{e['mean_y']:.2f}) std "
              f"({e['std_x']:.2f},{e['std_y']:.2f}) nonfinite {e['nonfinite']} ({row['seconds']:.0f}s)", flush=True)
      for sigma in probe_sigmas:   # where along the noise levels the network fails
        e = evaluate(probe(state.ema[objective.export_role], jnp.float32(sigma)), mix, reference)
        row[f"probe_{sigma:g}"] = e
        print(f"  step {step + 1:5d} f(x + {sigma:g} z, {sigma:g}): modes {e['modes']}/{len(mix.weights)} near "
              f"{e['near']:.2f} std ({e['std_x']:.2f},{e['std_y']:.2f})", flush=True)
      history.append(row)
  if args.save_samples:
    np.savez(args.save_samples, x=np.asarray(sample(state, jax.random.key(99), args.num_samples, None, 1)))
  losses = {k: v for k, v in history[-1].items() if "loss" in k}
  print("  final losses:", {k: round(v, 5) for k, v in losses.items()}, flush=True)
  with open(args.out, "a") as f:
    f.write(json.dumps({"objective": args.objective, "preset": args.preset, "mixture": args.mixture,
                        "set": args.set, "steps": num_steps, "seed": args.seed, "label": args.label,
                        "teacher_sw": teacher_sw, "history": history}) + "\n")


if __name__ == "__main__":
  main()
