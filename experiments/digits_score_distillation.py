"""Digits benchmark of the distillation objectives: one-step generators distilled from the digits EDM teacher
(`make demo` trains it into workdirs/demo/teacher), against the teacher's own Heun NFE-35 samples. The few-step
objectives of FEW_STEP (consistency models, progressive distillation, MeanFlow) run the same way and are evaluated
at 1 and 2 steps (rows 'NAME, 2 steps'); IGN and the adversarial generator (TEACHER_FREE) train from the data alone.

For each objective it trains with the objective's `digits` preset (generator and fake score start from the
teacher), evaluates the generator's EMA every `--eval_every` steps on `--num_samples` class-balanced one-step
samples with the digits FD (gendistill.evaluation.digits_metrics: Frechet distance of the embedded digits
classifier's features), and records the first evaluation at which the student's FD is no worse than the teacher's
NFE-35 FD (the SiD paper's claim that the student can surpass its teacher). Writes
experiments/digits_score_distillation.md (and .json).

    .venv/bin/python experiments/digits_score_distillation.py --teacher=workdirs/demo/teacher
    .venv/bin/python experiments/digits_score_distillation.py --objectives=sid --steps=1000
    .venv/bin/python experiments/digits_score_distillation.py --objectives=sct --steps=600 \\
        --teacher_reference=experiments/results/OTHER_RUN.json   # reuse that run's teacher FDs (same draws)
    .venv/bin/python experiments/digits_score_distillation.py --out=experiments/digits_every_objective \\
        --merge=experiments/results/RUN_A.json,experiments/results/RUN_B.json#sim+sct   # one table; from B sim, sct
"""
import argparse
import importlib
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gendistill  # noqa: E402,F401  (CPU flags before jax starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

import results_md  # noqa: E402  (experiments/results_md.py)
from configs import base  # noqa: E402
from gendistill import data as data_lib  # noqa: E402
from gendistill import evaluation, objectives, teachers, train  # noqa: E402
from gendistill.objectives import progressive  # noqa: E402
from gendistill.objectives.base import example_batch  # noqa: E402

OBJECTIVES = ("sid", "sida", "diff_instruct", "dmd", "dmd2", "fdistill", "sim", "ign", "adversarial", "add")
FEW_STEP = ("cd", "ct", "ict", "ect", "progressive", "sct", "scd", "meanflow")   # also evaluated with 2 steps
TEACHER_FREE = ("ign", "adversarial")   # presets that train from data alone (no teacher= flag)


def sampler_steps(name):
  return (1, 2) if name in FEW_STEP else (1,)


def draws(sample, seeds):
  """Digits metrics of `sample(key)` over several draws: each draw's metrics, the FD's mean and sd over draws,
  and the metrics of all draws pooled into one sample set (less noisy than any one draw)."""
  outs = [sample(jax.random.key(s)) for s in seeds]
  metrics = lambda x, y: {k: float(v) for k, v in evaluation.digits_metrics(x, y).items()}
  rows = [metrics(*out) for out in outs]
  fds = np.array([r["digits_fd"] for r in rows])
  labels = None if outs[0][1] is None else np.concatenate([np.asarray(y) for _, y in outs])  # None: unconditional
  pooled = metrics(np.concatenate([np.asarray(x) for x, _ in outs]), labels)
  return {"seeds": list(seeds), "draws": rows, "digits_fd_mean": float(fds.mean()),
          "digits_fd_sd": float(fds.std(ddof=1)) if len(fds) > 1 else 0.0, "pooled": pooled}


def draw_seeds(args):
  return [args.seed + 1000 * (i + 1) for i in range(args.final_draws)]


def teacher_metrics(teacher_dir, num_samples, seed, steps=18, seeds=()):
  """The teacher's own Heun (NFE 2 steps - 1) digits metrics, through its objective's sampler; with `seeds`,
  also over that many more draws (one 1000-sample FD moves by a few tenths between draws)."""
  from gendistill import checkpoint  # pylint: disable=g-import-not-at-top
  with open(os.path.join(teacher_dir, "config.json")) as f:
    saved = json.load(f)
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(objectives.migrate_config(saved["config"]))
  spec = data_lib.DataSpec(**saved["spec"])
  objective = objectives.build(config, spec)
  state = checkpoint.restore_state(teacher_dir, objective, spec)
  t0 = time.time()
  samples, labels = train.generate(objective, state, jax.random.key(seed), num_samples, 250, spec.num_classes, steps)
  seconds = time.time() - t0
  ref = {**{k: float(v) for k, v in evaluation.digits_metrics(samples, labels).items()},
         "sampling_seconds": seconds, "nfe": 2 * steps - 1}
  if seeds:
    ref["final_draws"] = draws(
        lambda key: train.generate(objective, state, key, num_samples, 250, spec.num_classes, steps), seeds)
  return ref


def run_one(name, args, teacher_fd):
  preset = "digits" if name in TEACHER_FREE else f"digits,teacher={args.teacher}"
  config = importlib.import_module(f"configs.{name}").get_config(preset)
  config.seed = args.seed
  if args.steps:
    o, preset_length = config.objective[name], config.train.num_steps
    config.train.num_steps = args.steps
    if name == "progressive":   # every halving round in the shorter run: its steps split evenly over the rounds
      o.steps_per_round = args.steps // progressive.num_rounds(o.teacher_steps, o.final_steps)
    elif name == "ect":         # every stage of the preset's schedule in the shorter run
      o.stage_steps = max(o.stage_steps * args.steps // preset_length, 1)
  if args.batch_size:
    config.data.batch_size = args.batch_size
  base.override(config, args.set)
  dataset = data_lib.build(config.data)
  teacher = teachers.device_put(teachers.build(config.teacher, dataset, config.network))
  objective = objectives.build(config, dataset.spec)
  state = jax.jit(objective.init)(jax.random.key(config.seed), example_batch(dataset.spec), teacher)
  step_fn = jax.jit(objective.train_step, donate_argnums=0)
  it = dataset.iterator()
  ratio = max(int(config.objective[name].get("generator_every", 1)), 1)

  def evaluate(step, seconds):
    """{sampler steps: metrics row} of the generator's EMA now."""
    rows = {}
    for n in sampler_steps(name):
      samples, labels = train.generate(objective, state, jax.random.key(args.seed + 1), args.num_samples, 250,
                                       dataset.spec.num_classes, n)
      m = {k: float(v) for k, v in evaluation.digits_metrics(samples, labels).items()}
      rows[n] = {"step": step, "generator_updates": (step + ratio - 1) // ratio, "train_seconds": seconds, **m}
      print(f"  {name:14s} {n}-step, step {step:5d} digits_fd {m['digits_fd']:.3f} acc "
            f"{m.get('class_accuracy', float('nan')):.3f} ({seconds:.0f}s)", flush=True)
    return rows

  histories = {n: [row] for n, row in evaluate(0, 0.0).items()}
  seconds, reached = 0.0, {n: None for n in histories}
  t0 = time.time()
  state, _ = step_fn(state, next(it), teacher)
  jax.block_until_ready(state)
  compile_seconds = time.time() - t0
  for step in range(1, config.train.num_steps):
    t0 = time.time()
    state, metrics = step_fn(state, next(it), teacher)
    if (step + 1) % args.eval_every == 0 or step + 1 == config.train.num_steps:
      jax.block_until_ready(state)
      seconds += time.time() - t0
      losses = {k: float(v) for k, v in jax.device_get(metrics).items() if k.endswith("loss")}
      for n, row in evaluate(step + 1, seconds).items():
        histories[n].append({**row, **losses})
        if reached[n] is None and row["digits_fd"] <= teacher_fd:
          reached[n] = row
    else:
      seconds += time.time() - t0
  results = []
  for n, history in histories.items():
    label = name + (f", {n} steps" if n > 1 else "") + (f" ({args.label})" if args.label else "")
    final_draws = draws(lambda key, n=n: train.generate(objective, state, key, args.num_samples, 250,
                                                        dataset.spec.num_classes, n), draw_seeds(args))
    if args.grids:   # 100 final samples; a conditional generator's columns are its classes
      samples, _ = train.generate(objective, state, jax.random.key(args.seed + 1), 100, 100,
                                  dataset.spec.num_classes, n)
      evaluation.save_image_grid(samples, f"{args.out}_{name}_{n}step.png", ncols=10)
    results.append({"objective": label, "sampler_steps": n, "final": history[-1],
                    "best": min(history, key=lambda r: r["digits_fd"]), "reached": reached[n], "history": history,
                    "final_draws": final_draws, "compile_seconds": compile_seconds,
                    "num_steps": config.train.num_steps, "batch_size": config.data.batch_size})
  return results


def write_table(args, ref, results, runs=()):
  lines = [
      "# Digits benchmark: distillation of the digits EDM teacher", "",
      f"Generated by `experiments/digits_score_distillation.py --teacher={args.teacher} --num_samples="
      f"{args.num_samples} --eval_every={args.eval_every}{' --steps=' + str(args.steps) if args.steps else ''}"
      f"{''.join(' --set=' + s for s in getattr(args, 'set', []))}` on a "
      "2-core CPU (shared with other jobs: times are indicative). Digits FD: Frechet distance of the embedded digits "
      f"classifier's features, {args.num_samples} class-balanced samples against the real digits. One-step samples "
      "of each generator's EMA (rows 'NAME, 2 steps': two sampler steps); 'reached' is the first evaluation with FD "
      "no worse than the teacher's Heun NFE 35.",
      "", f"Teacher, Heun NFE {ref['nfe']}: digits FD {ref['digits_fd']:.3f}, class accuracy "
      f"{ref.get('class_accuracy', float('nan')):.3f}, {ref['sampling_seconds']:.1f} s for {args.num_samples} samples"
      + (f"; over {len(ref['final_draws']['seeds'])} more draws {_mean_sd(ref['final_draws'])}."
         if "final_draws" in ref else "."),
      *(["", "Merged (`--merge`) from the runs " + "; ".join(runs) + "."] if runs else []),
      "", "The final generator is also evaluated on fresh draws of samples (same seeds as the teacher's draws): "
      "'final FD, draws' is their mean +- sd (number of draws) and the FD of all draws pooled into one "
      "sample set; compare them with the teacher's.",
  ]
  # Merged runs of different teachers (a retrained teacher has other weights): each row with its own teacher's FD.
  teacher_fds = {round(r.get("teacher_fd", ref["digits_fd"]), 3) for r in results}
  per_run = len(teacher_fds) > 1
  if per_run:
    lines += ["", "The merged runs distilled different trainings of the teacher (retrained between sessions): "
              "'teacher FD' is the Heun NFE 35 FD of the teacher of that row's run, the one to compare it with "
              "(the teacher line above is the last run's)."]
  lines += ["", "| objective | final FD | final FD, draws | best FD (step) | class acc | reached teacher (step / G "
            "updates / s) | steps | batch | train s |" + (" teacher FD |" if per_run else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if per_run else "")]
  for r in results:
    f, b, reached = r["final"], r["best"], r["reached"]
    where = (f"{reached['step']} / {reached['generator_updates']} / {reached['train_seconds']:.0f}" if reached
             else "not reached")
    teacher_cell = f" {r.get('teacher_fd', ref['digits_fd']):.3f} |" if per_run else ""
    lines.append(f"| {r['objective']} | {f['digits_fd']:.3f} | {_mean_sd(r.get('final_draws'))} | "
                 f"{b['digits_fd']:.3f} ({b['step']}) | "
                 f"{_accuracy(f)} | {where} | {r['num_steps']} | {r['batch_size']} | "
                 f"{f['train_seconds']:.0f} |{teacher_cell}")
  lines += ["", "Digits FD by step (samples of the generator's EMA; one step unless the row says 2):", ""]
  lines += [f"- {r['objective']}: " + ", ".join(f"{h['step']}: {h['digits_fd']:.2f}" for h in r["history"])
            for r in results]
  print(results_md.write(args.out + ".md", lines))


def _accuracy(metrics) -> str:
  """Class accuracy, or '-' for an unconditional generator (no labels to score against)."""
  acc = metrics.get("class_accuracy", float("nan"))
  return "- (unconditional)" if np.isnan(acc) else f"{acc:.3f}"


def _mean_sd(d):
  if not d:
    return "-"
  pooled = f"; pooled {d['pooled']['digits_fd']:.3f}" if "pooled" in d else ""
  return f"{d['digits_fd_mean']:.3f} +- {d['digits_fd_sd']:.3f} ({len(d['seeds'])}){pooled}"


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--teacher", default=os.path.join("workdirs", "demo", "teacher"))
  parser.add_argument("--objectives", default=",".join(OBJECTIVES))
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--eval_every", type=int, default=250)
  parser.add_argument("--steps", type=int, default=0, help="override the presets' train.num_steps")
  parser.add_argument("--batch_size", type=int, default=0, help="override the presets' batch size")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--final_draws", type=int, default=3,
                      help="evaluate the teacher and each final generator on this many more sample draws")
  parser.add_argument("--set", action="append", default=[],
                      help="config override KEY=VALUE (JSON value), e.g. objective.sid.alpha=1.0; repeatable")
  parser.add_argument("--grids", action="store_true",
                      help="also write 100 final samples of each generator as OUT_<objective>_<n>step.png")
  parser.add_argument("--label", default="", help="a note shown next to the objective's name in the table")
  parser.add_argument("--merge", default="",
                      help="comma-separated .json files (FILE#a+b: only objectives a, b of it): only write their "
                           "merged table")
  parser.add_argument("--teacher_reference", default="",
                      help="a .json of an earlier run of this script with the same teacher, --num_samples, --seed and "
                           "--final_draws: reuse its teacher metrics instead of sampling the teacher again")
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "digits_score_distillation"))
  args = parser.parse_args()
  if args.merge:
    merge(args.merge.split(","), args)
    return
  names = args.objectives.split(",")
  unknown = sorted(set(names) - set(OBJECTIVES + FEW_STEP))
  if unknown:
    parser.error(f"unknown objectives {unknown}; known: {', '.join(OBJECTIVES + FEW_STEP)}")
  # The teacher is read to sample it (no --teacher_reference) or for the students it teaches; IGN and the
  # adversarial generator with a reused reference never touch it.
  needs_teacher = not args.teacher_reference or any(n not in TEACHER_FREE for n in names)
  if needs_teacher and not os.path.exists(os.path.join(args.teacher, "config.json")):
    sys.exit(f"No digits teacher in {args.teacher!r}: run `make demo` (or train configs/edm.py:digits) first.")
  if args.teacher_reference:
    ref = reuse_teacher_reference(args)
  else:
    ref = teacher_metrics(args.teacher, args.num_samples, args.seed, seeds=draw_seeds(args))
  print(f"teacher Heun NFE {ref['nfe']}: digits FD {ref['digits_fd']:.3f}", flush=True)
  results = []
  with open(args.out + ".json", "w") as f:   # the teacher's metrics now: another run may reuse them meanwhile
    json.dump({"args": vars(args), "teacher": ref, "results": results}, f, indent=1)
  for name in names:
    results += run_one(name, args, ref["digits_fd"])
    with open(args.out + ".json", "w") as f:   # after every objective: a partial benchmark keeps what it has
      json.dump({"args": vars(args), "teacher": ref, "results": results}, f, indent=1)
    jax.clear_caches()   # each objective's compiled programs hold GBs of host memory
  write_table(args, ref, results)


def reuse_teacher_reference(args):
  """The teacher metrics of an earlier run's .json, after checking that they were made on the same draws."""
  with open(args.teacher_reference) as f:
    saved = json.load(f)
  for key in ("teacher", "num_samples", "seed", "final_draws"):
    if saved["args"].get(key) != getattr(args, key):
      sys.exit(f"--teacher_reference={args.teacher_reference}: its run had {key}={saved['args'].get(key)!r}, this "
               f"one has {getattr(args, key)!r}; the teacher FDs must come from the same teacher and draws (rerun "
               "without --teacher_reference, or with matching flags).")
  return saved["teacher"]


def merge(paths, args):
  """One table from several runs' .json files, e.g. objectives run separately; each row keeps its run's teacher
  FD."""
  results, runs = [], []
  for entry in paths:
    path, _, only = entry.partition("#")   # FILE#a+b: only objectives a and b of that run
    with open(path) as f:
      saved = json.load(f)
    base_name = lambda r: re.split(r"[ ,(]", r["objective"])[0]   # 'sct, 2 steps' -> 'sct'
    keep = set(only.split("+")) if only else None
    present = {base_name(r) for r in saved["results"]}
    if keep and keep - present:
      sys.exit(f"--merge entry {entry!r}: {sorted(keep - present)} not among its objectives {sorted(present)}.")
    results += [{**r, "teacher_fd": saved["teacher"]["digits_fd"]} for r in saved["results"]
                if keep is None or base_name(r) in keep]
    a = saved["args"]
    names = only.replace("+", ",") if only else a["objectives"]
    steps = f" --steps={a['steps']}" if a["steps"] else ""   # none: the presets' own lengths
    runs.append(f"`{os.path.relpath(path, ROOT)}` (--objectives={names}{steps} --eval_every={a['eval_every']}"
                + "".join(f" --set={s}" for s in a.get("set", [])) + ")")
  for key in ("teacher", "num_samples", "eval_every"):
    setattr(args, key, saved["args"][key])
  args.steps, args.set = 0, []   # per run: in the list of runs and the table
  write_table(args, saved["teacher"], results, runs)


if __name__ == "__main__":
  main()
