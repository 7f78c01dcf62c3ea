"""Benchmarks of the IGN and adversarial objectives (results table: experiments/ign_adversarial.md).

  .venv/bin/python experiments/ign_adversarial.py --bench=toy2d  [--steps=2000] [--extra=sid,dmd2]
  .venv/bin/python experiments/ign_adversarial.py --bench=digits [--steps=600] \
      [--teacher_workdir=workdirs/demo/teacher] [--extra=sid,dmd2]

toy2d (ring8_unequal, batch 512): ign (L1, MSE) and adversarial (ns, hinge, ns + Diffusion-GAN noise) from scratch;
add, and with --extra the score-distillation objectives, distil the exact mixture teacher with the student started
from an `edm` MLP trained on the mixture (as experiments/toy_score_distillation.py does). Metrics: toy_metrics of
--num_samples one-step samples of the generator's EMA against as many fresh samples of the mixture; IGN also gets
its refinement curve f^k, k = 1..10. References: the exact teacher with Heun 18 steps (NFE 35) and fresh data.

digits (16x16): ign (unconditional) with its refinement curve and the projection of corrupted real digits
(digits FD / class accuracy of f(corrupted) and f^3(corrupted) against the corrupted inputs; figure in
experiments/figures/ign_projection_digits.png), adversarial (class-conditional); with --teacher_workdir (an
`edm` digits run) also add and the --extra objectives, started from the teacher.

Training uses each objective's preset (configs/<objective>.py) with --steps and the overrides listed in the
results; a plain jitted loop of `objective.train_step` (the contract every loop uses). Results go to
experiments/results/ign_adversarial_<bench>.json, figures to experiments/figures/.
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

import results_md  # noqa: E402  (experiments/results_md.py)
from gendistill import data as data_lib  # noqa: E402
from gendistill import evaluation  # noqa: E402
from gendistill import objectives  # noqa: E402
from gendistill import teachers  # noqa: E402
from gendistill import train  # noqa: E402
from gendistill.diffusion import samplers  # noqa: E402
from gendistill.objectives import ign  # noqa: E402
from gendistill.objectives.base import example_batch  # noqa: E402

RESULTS = os.path.join(ROOT, "experiments", "results")
FIGURES = os.path.join(ROOT, "experiments", "figures")
TOY_KEYS = ("mmd2", "sliced_wasserstein", "energy_distance", "num_modes_covered", "high_quality_fraction",
            "mode_weights_tv")
DIGITS_KEYS = ("digits_fd", "class_accuracy", "class_histogram_tv")


def _set(config, overrides: dict):
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def record(bench: str, name: str, row: dict):
  """Adds one result to experiments/results/ign_adversarial_<bench>.json right away (runs are long)."""
  os.makedirs(RESULTS, exist_ok=True)
  path = os.path.join(RESULTS, f"ign_adversarial_{bench}.json")
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  results[name] = row
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(path + ".tmp", path)
  return row


def _rows(metrics: dict, keys):
  return {k: float(metrics[k]) for k in keys if k in metrics}


def pretrained_edm(dataset_arg: str, overrides: dict, workdir: str, steps: int):
  """An `edm` run (trained once, then reused from its workdir): its exported params and its network config."""
  config = importlib.import_module("configs.edm").get_config(dataset_arg)
  _set(config, overrides)
  config.train.update(num_steps=steps, sample_every=0, checkpoint_every=steps)
  train.train_and_evaluate(config, workdir)
  return teachers.from_workdir(workdir)


def run(objective_name: str, dataset_arg: str, steps: int, overrides: dict, *, teacher=None, init_params=None,
        seed: int = 0):
  """Trains one objective with a plain jitted loop; returns (config, dataset, objective, state, train seconds)."""
  config = _set(importlib.import_module(f"configs.{objective_name}").get_config(dataset_arg), overrides)
  config.seed = seed
  dataset = data_lib.build(config.data)
  objective = objectives.build(config, dataset.spec)
  state = jax.jit(objective.init)(jax.random.key(seed), example_batch(dataset.spec), teacher)
  if init_params is not None:  # students (and their EMA) from a pretrained network
    copy = lambda: jax.tree.map(jnp.array, init_params)
    roles = [r for r in ("generator", "fake_score") if r in state.params]
    state = state.replace(params={**state.params, **{r: copy() for r in roles}},
                          ema={**state.ema, **{r: copy() for r in roles if r in state.ema}})
  step_fn = jax.jit(objective.train_step, donate_argnums=0)
  it = dataset.iterator()
  state, metrics = step_fn(state, next(it), teacher)  # compile
  jax.block_until_ready(state)
  t0 = time.time()
  for _ in range(1, steps):
    state, metrics = step_fn(state, next(it), teacher)
  jax.block_until_ready(state)
  seconds = time.time() - t0
  last = {k: float(v) for k, v in jax.device_get(metrics).items() if k.endswith("loss")}
  return config, dataset, objective, state, seconds, last


# ----------------------------------------------------------------------------------------------------------
# toy2d


def bench_toy2d(args):
  kind = args.mixture
  data = {"data.toy2d_kind": kind}
  mix = data_lib.toy2d.mixture(kind)
  reference = mix.sample(args.num_samples, seed=12345)
  teacher = teachers.device_put(teachers.gaussian_mixture(mix.weights, mix.means, mix.covs))
  results = {}
  save = lambda name, row: results.__setitem__(name, record("toy2d", name, row))

  # References: the exact teacher with Heun 18 steps (NFE 35), and fresh samples of the mixture.
  noise = jax.random.normal(jax.random.key(7), (args.num_samples, 2))
  heun = jax.jit(lambda z: samplers.heun_sampler(teacher.denoise_fn(), z, num_steps=18))(noise)
  save("teacher_heun18", {"objective": "teacher (exact, Heun NFE 35)",
                          **_rows(evaluation.toy_metrics(heun, reference, mix), TOY_KEYS)})
  save("data", {"objective": "fresh data",
                **_rows(evaluation.toy_metrics(mix.sample(args.num_samples, seed=54321), reference, mix), TOY_KEYS)})

  scratch = {
      "ign_l1": ("ign", {}),
      "ign_mse": ("ign", {"objective.ign.distance": "mse"}),
      "adversarial_ns": ("adversarial", {}),
      "adversarial_hinge": ("adversarial", {"objective.adversarial.loss": "hinge"}),
      "adversarial_ns_diffusion": ("adversarial", {"objective.adversarial.instance_noise.kind": "diffusion",
                                                   "objective.adversarial.critic.noise_conditioned": True}),
  }
  distilled = {"add": ("add", {"objective.add.init": "random"})}
  for name in args.extra:
    distilled[name] = (name, {})
  pretrained = None
  if any(not args.only or n in args.only for n in distilled):
    edm_teacher = pretrained_edm("toy2d", data, os.path.join(args.workdir, f"edm_{kind}"), args.pretrain_steps)
    pretrained = edm_teacher.params
    samples = jax.jit(lambda z: samplers.heun_sampler(edm_teacher.denoise_fn(), z, num_steps=18))(noise)
    save("edm_mlp_heun18", {"objective": f"edm MLP ({args.pretrain_steps} steps, Heun NFE 35): the students' init",
                            **_rows(evaluation.toy_metrics(samples, reference, mix), TOY_KEYS)})

  runs = [(n, o, v, None) for n, (o, v) in scratch.items()] + [(n, o, v, pretrained) for n, (o, v) in distilled.items()]
  for name, objective_name, overrides, init in runs:
    if args.only and name not in args.only:
      continue
    overrides = {**data, **overrides}
    config, _, objective, state, seconds, losses = run(
        objective_name, "toy2d", args.steps, overrides, teacher=teacher if init is not None else None,
        init_params=init, seed=args.seed)
    rng = jax.random.key(123)
    sample = jax.jit(objective.sample, static_argnums=(2, 4))
    samples = np.asarray(sample(state, rng, args.num_samples, None, None))
    row = {"objective": objective_name, "overrides": overrides, "steps": args.steps,
           "init": "edm MLP" if init is not None else "random", "train_seconds": seconds, "final_losses": losses,
           **_rows(evaluation.toy_metrics(samples, reference, mix), TOY_KEYS)}
    evaluation.save_scatter(samples, os.path.join(FIGURES, f"toy2d_{name}.png"), reference=reference, title=name)
    if objective_name == "ign":
      row["refinement"] = []
      for k in range(1, 11):
        refined = np.asarray(sample(state, rng, args.num_samples, None, k))
        row["refinement"].append({"k": k, **_rows(evaluation.toy_metrics(refined, reference, mix), TOY_KEYS)})
    save(name, row)
    print(name, json.dumps({k: v for k, v in row.items() if k != "refinement"}), flush=True)
  return results


# ----------------------------------------------------------------------------------------------------------
# digits


def _clip(x):
  return np.clip(np.asarray(x), -1.0, 1.0)


def projection_benchmark(config, state, dataset, figure_name):
  """Corrupted real digits -> f(.) and f^3(.): digits FD and class accuracy against the corrupted inputs."""
  ref = dataset.reference()
  x, labels = jnp.asarray(ref["image"]), ref["label"]
  network = objectives.networks_for(config, dataset.spec)["generator"]
  project = jax.jit(ign.projector(network, config.objective.ign), static_argnames=("steps",))
  params = state.ema["generator"]
  corruptions = {
      "none": lambda rng, v: v,
      "noise_0.4": lambda rng, v: ign.corrupt_noise(rng, v, 0.4),
      "mask_0.4": lambda rng, v: ign.corrupt_mask(rng, v, 0.4, 0.0),
      "blur_1.0": lambda rng, v: ign.corrupt_blur(rng, v, 1.0),
      "sketch": ign.corrupt_sketch,
  }
  rows, figure = {}, [_clip(x[:10])]
  for i, (name, corrupt) in enumerate(corruptions.items()):
    corrupted = corrupt(jax.random.key(i), x)
    out = {"input": _rows(evaluation.digits_metrics(_clip(corrupted), labels), DIGITS_KEYS)}
    for k in (1, 3):
      projected = project(params, corrupted, steps=k)
      out[f"f^{k}"] = _rows(evaluation.digits_metrics(_clip(projected), labels), DIGITS_KEYS)
      if name == "none" and k == 1:
        figure.append(_clip(projected[:10]))
      elif k == 1:
        figure += [_clip(corrupted[:10]), _clip(projected[:10])]
    rows[name] = out
    print("projection", name, json.dumps(out), flush=True)
  evaluation.save_image_grid(np.concatenate(figure), os.path.join(FIGURES, figure_name), ncols=10,
                             scale=3, padding=1)
  return rows


def bench_digits(args):
  runs = {"ign_l1": ("ign", {}, False), "adversarial_ns": ("adversarial", {}, False)}
  teacher = None
  if args.teacher_workdir:
    teacher = teachers.device_put(teachers.from_workdir(args.teacher_workdir))
    saved = json.load(open(os.path.join(args.teacher_workdir, "config.json")))["config"]
    runs["add"] = ("add", {}, True)
    for name in args.extra:
      runs[name] = (name, {}, True)
  results = {}
  for name, (objective_name, overrides, distil) in runs.items():
    if args.only and name not in args.only:
      continue
    overrides = {"data.batch_size": args.batch_size, **overrides}
    if distil:  # the students take the teacher's network and data sections
      overrides.update({f"network.{k}": tuple(v) if isinstance(v, list) else v for k, v in saved["network"].items()
                        if k in ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout",
                                 "embedding_type", "kind")})
      overrides.update({"teacher.source": "workdir", "teacher.workdir": args.teacher_workdir,
                        "data.conditional": saved["data"]["conditional"]})
    config, dataset, objective, state, seconds, losses = run(objective_name, "digits", args.steps, overrides,
                                                             teacher=teacher if distil else None, seed=args.seed)
    num_classes = dataset.spec.num_classes
    samples, labels = train.generate(objective, state, jax.random.key(123), args.num_samples, 250, num_classes)
    row = {"objective": objective_name, "steps": args.steps, "init": "edm teacher" if distil else "random",
           "overrides": {k: str(v) for k, v in overrides.items()},
           "train_seconds": seconds, "final_losses": losses,
           **_rows(evaluation.digits_metrics(_clip(samples), labels), DIGITS_KEYS)}
    evaluation.save_image_grid(_clip(samples[:100]), os.path.join(FIGURES, f"digits_{name}{args.tag}.png"), ncols=10,
                               scale=2)
    if objective_name == "ign":
      row["refinement"] = []
      for k in range(1, 11):
        refined, _ = train.generate(objective, state, jax.random.key(123), args.num_samples, 250, num_classes, k)
        row["refinement"].append({"k": k, **_rows(evaluation.digits_metrics(_clip(refined), labels), DIGITS_KEYS)})
      figure = f"ign_projection_digits{args.tag}.png"
      row["projection"] = projection_benchmark(config, state, dataset, figure)
      row["projection_figure"] = f"experiments/figures/{figure}"
    results[name] = record("digits", name + args.tag, row)
    print(name, json.dumps({k: v for k, v in row.items() if k not in ("refinement", "projection")}), flush=True)
  if teacher is not None:
    t0 = time.time()
    labels = np.arange(args.num_samples) % 10
    heun = jax.jit(lambda z, y: samplers.heun_sampler(teacher.denoise_fn(jax.nn.one_hot(y, 10)), z, num_steps=18))
    out = [np.asarray(heun(jax.random.normal(jax.random.key(i), (250, 16, 16, 1)), jnp.asarray(labels[s:s + 250])))
           for i, s in enumerate(range(0, args.num_samples, 250))]
    results["teacher_heun18"] = record("digits", "teacher_heun18", {
        "objective": "edm teacher, Heun NFE 35", "sample_seconds": time.time() - t0,
        **_rows(evaluation.digits_metrics(_clip(np.concatenate(out)), labels), DIGITS_KEYS)})
  return results


# ----------------------------------------------------------------------------------------------------------
# results table


def _fmt(v, digits=4):
  if isinstance(v, float):
    return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.{digits}g}"
  return "" if v is None else str(v)


def _overrides(row):
  skip = ("data.toy2d_kind", "data.batch_size", "teacher.", "network.", "data.conditional")
  items = [f"{k.split('.')[-1]}={v}" for k, v in row.get("overrides", {}).items() if not k.startswith(skip)]
  return ", ".join(items) or "preset"


def _section(results, keys, labels, ref_key, ref_label):
  lines = ["| run | init | settings | steps | train s | " + " | ".join(labels) + f" | {ref_label} |",
           "|" + "---|" * (6 + len(keys))]
  ref = results.get("teacher_heun18", {}).get(ref_key)
  for name, row in results.items():
    if name.startswith("_") or not isinstance(row, dict):
      continue
    ratio = f"{row[ref_key] / ref:.2f}" if ref and ref_key in row else ""
    lines.append(f"| {name} ({row['objective']}) | {row.get('init', '')} | {_overrides(row) if 'steps' in row else ''} | "
                 f"{row.get('steps', '')} | {_fmt(row.get('train_seconds'), 3)} | "
                 + " | ".join(_fmt(row.get(k)) for k in keys) + f" | {ratio} |")
  return lines


def _refinement(results, key, label):
  lines = []
  for name, row in results.items():
    if isinstance(row, dict) and "refinement" in row:
      lines.append(f"- {name}: " + ", ".join(f"k={r['k']}: {_fmt(r[key], 3)}" for r in row["refinement"]))
  return [f"IGN refinement curve f^k(z), {label} for k = 1..10:", ""] + lines if lines else []


def write_table():
  """experiments/ign_adversarial.md from experiments/results/ign_adversarial_{toy2d,digits}.json."""
  out = ["# IGN and adversarial objectives: benchmarks", "",
         "Generated by `experiments/ign_adversarial.py --table` from the results that the runs below recorded in "
         "experiments/results/ign_adversarial_<bench>.json (commands at the end of each section). A 2-core CPU shared "
         "with other jobs: train seconds exclude compilation and are indicative. `init`: random (trained from scratch) "
         "or the pretrained diffusion network the distillation students start from."]
  for bench, keys, labels, ref_key, ref_label in (
      ("toy2d", ("mmd2", "sliced_wasserstein", "num_modes_covered", "mode_weights_tv", "high_quality_fraction"),
       ("MMD^2", "SW", "modes", "mode TV", "high-quality"), "sliced_wasserstein", "SW / teacher"),
      ("digits", ("digits_fd", "class_accuracy", "class_histogram_tv"), ("digits FD", "class acc", "class TV"),
       "digits_fd", "FD / teacher")):
    path = os.path.join(RESULTS, f"ign_adversarial_{bench}.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      results = json.load(f)
    out += ["", f"## {bench}", ""] + _section(results, keys, labels, ref_key, ref_label) + [""]
    out += _refinement(results, ref_key, labels[keys.index(ref_key)])
    for name, row in results.items():
      if isinstance(row, dict) and "projection" in row:
        out += ["", f"Projection of corrupted real digits by {name} (f = the generator's EMA; 'input' is the corrupted "
                f"digits themselves; figure: {row.get('projection_figure', 'experiments/figures/ign_projection_digits.png')}"
                ", rows: clean, f(clean), then "
                "corrupted / f(corrupted) per corruption):", "",
                "| corruption | input FD | f FD | f^3 FD | input acc | f acc | f^3 acc |", "|---|---|---|---|---|---|---|"]
        for corruption, r in row["projection"].items():
          out.append(f"| {corruption} | " + " | ".join(_fmt(r[s].get("digits_fd"), 3) for s in ("input", "f^1", "f^3"))
                     + " | " + " | ".join(_fmt(r[s].get("class_accuracy"), 3) for s in ("input", "f^1", "f^3")) + " |")
    commands = [v for k, v in results.items() if k.startswith("_command")]
    out += ["", "Commands:", ""] + [f"    {c}" for c in commands]
  print(results_md.write(os.path.join(ROOT, "experiments", "ign_adversarial.md"), out))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--bench", choices=("toy2d", "digits"), required=True)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--mixture", default="ring8_unequal", help="toy2d kind")
  parser.add_argument("--pretrain_steps", type=int, default=4000, help="toy2d: the edm MLP the students start from")
  parser.add_argument("--batch_size", type=int, default=64, help="digits only")
  parser.add_argument("--num_samples", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "bench_ign_adversarial"))
  parser.add_argument("--teacher_workdir", default="", help="digits: an edm digits run, for add and --extra")
  parser.add_argument("--only", default="", help="comma-separated run names")
  parser.add_argument("--extra", default="", help="comma-separated distillation objectives with a configs/<name>.py")
  parser.add_argument("--tag", default="", help="appended to the run names (and figure names), e.g. a longer rerun")
  parser.add_argument("--table", action="store_true", help="only write experiments/ign_adversarial.md from the results")
  args = parser.parse_args()
  if args.table:
    write_table()
    return
  args.only = [s for s in args.only.split(",") if s]
  args.extra = [s for s in args.extra.split(",") if s]
  if args.steps is None:
    args.steps = 2000 if args.bench == "toy2d" else 600
  if args.num_samples is None:
    args.num_samples = 4000 if args.bench == "toy2d" else 1000
  bench_toy2d(args) if args.bench == "toy2d" else bench_digits(args)
  record(args.bench, "_command " + (",".join(args.only) or "all") + args.tag, " ".join(sys.argv))
  print("wrote", os.path.join(RESULTS, f"ign_adversarial_{args.bench}.json"))

if __name__ == "__main__":
  main()
