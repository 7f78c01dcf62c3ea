"""Compile time and size of every objective's digits train step on this CPU.

    .venv/bin/python benchmarks/compile_time.py --label=after --md=benchmarks/compile_time.md
    .venv/bin/python benchmarks/compile_time.py --preset=digits,smoke --jsonl=benchmarks/compile_time_smoke.jsonl \
        --label=after --md=benchmarks/compile_time_smoke.md   # the smoke presets the tests run

Each objective's step (configs/<name>.py:digits, batch 64, the teacher as shapes from configs/edm.py:digits, one
CPU device; --preset and --set choose another preset or override config keys) is lowered and compiled in its own
fresh process with no persistent compilation cache, exactly as `train.compile_ahead` builds it. Recorded per step:
seconds to lower (trace to StableHLO) and to compile (--repeats: the median of that many processes, and their
range), the optimized HLO's size in characters (`compiled.as_text()`), its number of fusions, convolutions,
copies and scalar-or-vector `and` instructions. These counts are deterministic, unlike timings on a shared
machine; the compile time is wall-clock and drifts with the load (the 1-minute load average is recorded with it).

Rows accumulate in a JSON-lines file (--jsonl) under a --label (e.g. 'before' and 'after' a change); --md writes
the table of every label found there. Each optimized HLO is also written to $TMPDIR/gendistill_compile_time/.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = ("edm", "sid", "sida", "diff_instruct", "dmd", "dmd2", "fdistill", "progressive", "cd", "ct", "ict",
              "ect", "ign", "adversarial", "add", "sim", "sct", "scd", "meanflow")


def hlo_counts(text: str) -> dict:
  return {
      "hlo_chars": len(text),
      "fusions": len(re.findall(r", kind=k(?:Loop|Input|Output|Custom)", text)),
      "convolutions": len(re.findall(r" convolution\(", text)),
      "copies": len(re.findall(r" copy\(", text)),
      "transposes": len(re.findall(r" transpose\(", text)),
      "ands": len(re.findall(r" and\(", text)),
  }


def measure_one(name: str, opt_level: int = -1, time_steps: int = 0, preset: str = "digits", overrides=()) -> dict:
  """Lower and compile configs/<name>.py:<preset>'s step in this process (then time `time_steps` steps); the
  teacher is configs/edm.py:<preset>'s network as shapes, and `overrides` ('key=value') apply to both configs.
  `opt_level` >= 0 replaces the library's CPU LLVM level (gendistill/_platform.py) for this measurement."""
  sys.path.insert(0, ROOT)
  import gendistill  # noqa: F401  (CPU flags before jax starts)
  from gendistill import _platform
  if opt_level >= 0:
    _platform.CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": opt_level}
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import base
  from configs import edm as edm_config
  from gendistill import data as data_lib
  from gendistill import objectives, sharding, teachers
  import importlib

  config = base.override(importlib.import_module(f"configs.{name}").get_config(preset), overrides)
  teacher = None
  if name != "edm":
    teacher_config = base.override(edm_config.get_config(preset), overrides)
    teacher = teachers.abstract(teacher_config, data_lib.build(teacher_config.data).spec)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    spec = data_lib.build(config.data).spec
    sharded = sharding.ShardedObjective(objectives.build(config, spec), spec, mesh, teacher, config.mesh)
    t0 = time.perf_counter()
    lowered = sharded.lower_step(config.data.batch_size)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    step_ms = None
    if time_steps:   # a real state (teacher weights constant 0.01) and data batches; the first step is a warm-up
      real = None if teacher is None else sharded.put_teacher(teacher.replace(
          params=jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), teacher.params)))
      state = sharded.init(jax.random.key(0), real)
      sharded.use_compiled_step(compiled)
      iterator = data_lib.build(config.data).iterator()
      times = []
      for _ in range(time_steps + 1):
        batch = sharded.put_batch(next(iterator))
        t = time.perf_counter()
        state, metrics = sharded.train_step(state, batch, real)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
      step_ms = round(1000 * float(np.median(times[1:])))
  text = compiled.as_text()
  row = {"objective": name, "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1),
         "load1": round(os.getloadavg()[0], 1), **hlo_counts(text)}
  if opt_level >= 0:
    row["opt_level"] = opt_level
  if preset != "digits" or overrides:
    row["preset"] = ",".join([preset, *overrides])
  if step_ms is not None:
    row["step_ms"] = step_ms
  dump = os.path.join(tempfile.gettempdir(), "gendistill_compile_time")   # kept for inspection
  os.makedirs(dump, exist_ok=True)
  with open(os.path.join(dump, f"{name}.hlo.txt"), "w") as f:
    f.write(text)
  return row


def write_md(jsonl: str, md: str, command: str, only=()):
  rows = [json.loads(line) for line in open(jsonl) if line.strip()]
  labels = [l for l in dict.fromkeys(r["label"] for r in rows) if not only or l in only]
  latest = {}
  for r in rows:
    latest[(r["objective"], r["label"])] = r
  names = [n for n in OBJECTIVES if any((n, l) in latest for l in labels)]
  presets = {l: "/".join(dict.fromkeys(r.get("preset", "digits") for r in rows if r["label"] == l)) for l in labels}
  lines = ["# Compile time and size of the train steps", "",
           f"Generated by `{command}` (one fresh process per step, no persistent cache, 2-core shared CPU; "
           "compile seconds are wall-clock under the load average shown (with --repeats: the median and the range), "
           "the HLO counts are deterministic). "
           "Labels (commits): " + ", ".join(
               f"{l} = {'/'.join(dict.fromkeys(r['commit'] for r in rows if r['label'] == l))}" for l in labels)
           + ". Presets: " + ", ".join(f"{l} = `{p}`" for l, p in presets.items()) + ".", ""]
  metrics = (("compile s", "compile_s", "{:.1f}"), ("step ms", "step_ms", "{:d}"), ("HLO MB", "hlo_chars", "{:.2f}"),
             ("fusions", "fusions", "{:d}"), ("`and` ops", "ands", "{:d}"))
  metrics = tuple(m for m in metrics if any(m[1] in latest[k] for k in latest if k[1] in labels))   # no empty columns
  head = "| objective | " + " | ".join(f"{what} ({l})" for what, _, _ in metrics for l in labels) + \
      " | load (" + ", ".join(labels) + ") |"
  lines += [head, "|" + "---|" * (2 + len(metrics) * len(labels))]
  for n in names:
    cells = []
    for _, key, fmt in metrics:
      for l in labels:
        r = latest.get((n, l))
        if r is None or "error" in r or key not in r:
          cells.append("-")
        else:
          v = r[key] / 1e6 if key == "hlo_chars" else r[key]
          draws = r.get(f"{key}_draws")
          cells.append(fmt.format(v) + (f" ({min(draws):.1f}-{max(draws):.1f})" if draws else ""))
    loads = ", ".join(str(latest[(n, l)].get("load1", "-")) if (n, l) in latest else "-" for l in labels)
    lines.append(f"| {n} | " + " | ".join(cells) + f" | {loads} |")
  with open(md, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--objectives", default=",".join(OBJECTIVES))
  parser.add_argument("--label", default="current")
  parser.add_argument("--jsonl", default=os.path.join(ROOT, "benchmarks", "compile_time.jsonl"))
  parser.add_argument("--md", default="", help="write the table of every label in --jsonl to this file")
  parser.add_argument("--opt_level", type=int, default=-1,
                      help="LLVM level of the CPU programs for this measurement (default: the library's)")
  parser.add_argument("--time_steps", type=int, default=0, help="also time this many train steps (median ms)")
  parser.add_argument("--preset", default="digits", help="the configs' preset argument, e.g. 'digits,smoke'")
  parser.add_argument("--set", action="append", default=[],
                      help="config override KEY=VALUE (JSON value), applied to the step's and the teacher's configs")
  parser.add_argument("--repeats", type=int, default=1,
                      help="compile each step this many times (fresh processes): the median and the range")
  parser.add_argument("--md_labels", default="", help="comma-separated labels of the --md table (default: all)")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print("ROW " + json.dumps(measure_one(args.one, args.opt_level, args.time_steps, args.preset, args.set)),
          flush=True)
    return
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "gendistill"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  for name in [n for n in args.objectives.split(",") if n]:
    draws = []
    for _ in range(args.repeats):
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--one={name}",
                             f"--opt_level={args.opt_level}", f"--time_steps={args.time_steps}",
                             f"--preset={args.preset}", *[f"--set={item}" for item in args.set]], env=env,
                            capture_output=True, text=True)
      found = [l for l in proc.stdout.splitlines() if l.startswith("ROW ")]
      draws.append(json.loads(found[-1][4:]) if found else
                   {"objective": name, "error": f"exit status {proc.returncode}: {proc.stderr[-2000:]}"})
    row = next((d for d in draws if "error" in d), draws[0])
    if len(draws) > 1 and "error" not in row:   # the median compile time, with every draw's
      row["compile_s_draws"] = [d["compile_s"] for d in draws]
      row["compile_s"] = sorted(row["compile_s_draws"])[len(draws) // 2]
    row.update(label=args.label, commit=commit + ("+" if dirty else ""))
    print(json.dumps(row), flush=True)
    with open(args.jsonl, "a") as f:
      f.write(json.dumps(row) + "\n")
  if args.md:
    command = ".venv/bin/python benchmarks/compile_time.py" + (
        f" --preset={args.preset}" if args.preset != "digits" else "") + (
        f" --jsonl={os.path.relpath(args.jsonl, ROOT)}" if args.jsonl != parser.get_default("jsonl") else "") + \
        (f" --repeats={args.repeats}" if args.repeats > 1 else "") + " --label=LABEL"
    only = tuple(l for l in args.md_labels.split(",") if l)
    write_md(args.jsonl, args.md, command + f" --md={os.path.relpath(args.md, ROOT)}"
             + (f" --md_labels={args.md_labels}" if only else ""), only)


if __name__ == "__main__":
  main()
