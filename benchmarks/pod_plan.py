"""Paper-scale train steps compiled for TPU pod slices from this machine: per-chip memory, FLOPs, collective
traffic and a roofline estimate of step time (gendistill.topology; needs `pip install -e '.[tpu]'`, no TPU).

    python benchmarks/pod_plan.py --runs=edm:cifar10@v5e:4x4 --timeout=3600 --out=benchmarks/pod_plan.jsonl
    python benchmarks/pod_plan.py --md=benchmarks/pod_plan.md --out=benchmarks/pod_plan.jsonl   # table only

A run is PRESET:DATASET@TOPOLOGY[+SWITCH...], e.g. sid:cifar10@v5p:2x2x2+bf16+fsdp. PRESET is a module of
configs/ (edm, sid, sida, dmd2, cd, ect, ign, ...) at its paper settings (global batch included); DATASET is
cifar10 or imagenet64 (the presets' networks are their published teachers' architectures: DDPM++ for CIFAR-10,
EDM's ADM for ImageNet-64; edm:imagenet64 is that ADM network trained with `edm` at EDM's ImageNet-64 batch of
4096 for 2500 Mimg). The teacher is the run's own (teachers.abstract_for_run, as shapes). Switches:
  bf16       network.dtype = bfloat16 (parameters stay float32)
  remat      network.remat = full
  mbN        train.microbatches = N
  fsdp       mesh data=1, fsdp=all chips (default: data=all chips, fsdp=1: the state replicated per chip)
  fsdpN      mesh fsdp=N, data=the rest
  smoke      a tiny network of the same architecture and a batch of 4 per chip (checks that a preset compiles,
             in seconds, before its paper-scale compile)
  quick      compile with XLA's lowest execution-time optimisation effort (topology.QUICK): minutes instead of
             hours at paper scale; FLOPs and collectives unchanged, temporaries within 4% of the default's (EDM and
             ECT CIFAR-10 side by side in the table; 2.1x on the tiny smoke step), but XLA counts 0.62-0.65x the
             HBM bytes, so the roofline of an HBM-bound quick row is optimistic by up to ~1.6x
Each compile runs in its own process with --timeout seconds (paper-scale steps compile slowly on a small
CPU); a row is written to --out (JSON lines, appended) as soon as it finishes or times out, and --md renders
every row of --out.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # several compiles at once (libtpu's lock file); no TPU used

# What the papers report for their full runs (the GPU side of the comparison).
PAPER_COMPUTE = {
    "edm:cifar10": ("8 V100 x ~2 days = ~384 V100-hours for 200 Mimg (EDM README, cond. DDPM++)", 200e6),
    "edm:imagenet64": ("32 A100 x ~13 days = ~9,984 A100-hours for 2,500 Mimg (EDM README, ADM)", 2500e6),
    "dmd2:imagenet64": ("7 GPUs x 53 h = 371 GPU-hours for 200k steps of batch 280 = 56 Mimg, FID 1.51, bf16 "
                        "mixed precision (DMD2 experiments/imagenet README; GPU type not named there)", 56e6),
}


NOTES = "## Reading the table (hand-written)"


def parse_run(run: str):
  """'sid:cifar10@v5p:2x2x2+bf16' -> ('sid', 'cifar10', 'v5p:2x2x2', ['bf16'])."""
  name, rest = run.split(":", 1)
  dataset, rest = rest.split("@", 1)
  topology, *switches = rest.split("+")
  return name, dataset, topology, switches


def build_config(name: str, dataset: str, switches, chips: int):
  import importlib  # pylint: disable=g-import-not-at-top
  from gendistill.data import DataSpec  # pylint: disable=g-import-not-at-top
  if name == "edm" and dataset == "imagenet64":
    from configs import edm as edm_config, sid as sid_config  # pylint: disable=g-import-not-at-top
    c = edm_config.get_config("cifar10")
    ref = sid_config.get_config("imagenet64")
    c.data.update(ref.data)
    c.network.update(ref.network)
    c.data.batch_size = 4096
    c.train.num_steps = 2_500_000_000 // 4096     # EDM ImageNet-64: 2500 Mimg
  else:
    c = importlib.import_module(f"configs.{name}").get_config(dataset)
  size = 32 if dataset == "cifar10" else 64
  classes = {"cifar10": 10, "imagenet64": 1000}[dataset] if c.data.conditional else 0
  spec = DataSpec("image", (size, size, 3), classes)
  c.mesh.update(data=-1, fsdp=1)
  for s in switches:
    if s == "bf16":
      c.network.dtype = "bfloat16"
    elif s == "remat":
      c.network.remat = "full"
    elif s.startswith("mb"):
      c.train.microbatches = int(s[2:])
    elif s == "fsdp":
      c.mesh.update(data=1, fsdp=chips)
    elif s.startswith("fsdp"):
      c.mesh.update(data=-1, fsdp=int(s[4:]))
    elif s == "quick":
      pass   # a compiler option (topology.QUICK), not a config change: see child()
    elif s == "smoke":
      c.network.update(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(size // 2,))
      c.data.batch_size = 4 * chips
    else:
      raise ValueError(f"Unknown switch {s!r}; expected bf16, remat, mbN, fsdp, fsdpN, smoke or quick.")
  return c, spec


def child(run: str):
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, ROOT)
  from gendistill import topology  # pylint: disable=g-import-not-at-top
  name, dataset, topo, switches = parse_run(run)
  config, spec = build_config(name, dataset, switches, len(topology.devices(topo)))
  report = topology.compile_step(config, spec, topo,
                                 compiler_options=topology.QUICK if "quick" in switches else None)
  usage = resource.getrusage(resource.RUSAGE_SELF)   # CPU time of the whole child (all threads): the compile's cost
  row = dict(run=run, status="compiled", paper_images=config.train.num_steps * config.data.batch_size,
             cpu_s=usage.ru_utime + usage.ru_stime, **report.row())
  print("RESULT " + json.dumps(row), flush=True)


def state_row(run: str):
  """Without compiling: the TrainState's and teacher's bytes per chip under the run's mesh and the library's rules
  (activations and temporaries not included)."""
  import jax  # pylint: disable=g-import-not-at-top
  from gendistill import objectives, sharding, teachers, topology  # pylint: disable=g-import-not-at-top
  name, dataset, topo, switches = parse_run(run)
  devices = topology.devices(topo)
  config, spec = build_config(name, dataset, switches, len(devices))
  teacher = teachers.abstract_for_run(config, spec)
  mesh = sharding.make_mesh(config.mesh, devices)
  objective = objectives.build(config, spec)     # outside the mesh: some builders make constants eagerly
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh)
  teacher_bytes = 0 if teacher is None else sharding.bytes_per_device(
      sharding.with_shardings(teacher, sharded.teacher_shardings))
  params = sum(int(x.size) for x in jax.tree.leaves(sharded.abstract_state.params))
  return dict(run=run, chips=mesh.size, mesh=dict(mesh.shape), batch=config.data.batch_size, params=params,
              teacher_params=0 if teacher is None else sum(int(x.size) for x in jax.tree.leaves(teacher)),
              state_bytes=sharding.bytes_per_device(sharded.abstract_state), teacher_bytes=teacher_bytes,
              hbm_bytes=topology.chip(topo).hbm_bytes)


def state_table(rows):
  lines = ["| run | chips | mesh data x fsdp | global batch | trained params (M) | teacher params (M) | "
           "TrainState / chip (GiB) | teacher / chip (GiB) | share of HBM |", "|" + "---|" * 9]
  for r in rows:
    share = (r["state_bytes"] + r["teacher_bytes"]) / r["hbm_bytes"]
    lines.append(f"| {r['run']} | {r['chips']} | {r['mesh']['data']} x {r['mesh']['fsdp']} | {r['batch']} | "
                 f"{r['params'] / 1e6:.1f} | {r['teacher_params'] / 1e6:.1f} | {gib(r['state_bytes'])} | "
                 f"{gib(r['teacher_bytes'])} | {share:.0%} |")
  return "\n".join(lines)


def run_one(run: str, timeout: float):
  t0 = time.time()
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={run}"]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(run=run, status=f"not compiled within {timeout:.0f} s")
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  err = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("W0000", "I0000", "E0000"))]
  return dict(run=run, status=f"failed after {time.time() - t0:.0f} s: {err[-1][:300] if err else proc.returncode}")


def gib(x):
  return f"{x / 2**30:.2f}"


def table(rows):
  from gendistill import topology  # pylint: disable=g-import-not-at-top
  head = ("| run | chips / hosts | mesh data x fsdp | params (M) | state / chip (GiB) | args / temps / outputs (GiB) | "
          "peak / HBM (GiB) | fits | TFLOP / step / chip | GFLOP / image | collectives / chip (MB) | "
          "compute / HBM / ICI time (ms) | roofline step (ms) | images/s | paper run: Mimg, chip-hours | "
          "compile: wall / CPU (s) |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    if r.get("status") != "compiled":
      lines.append(f"| {r['run']} | {r.get('status')} |" + " |" * (head.count("|") - 3))
      continue
    c = topology.CHIPS[r["topology"].split(":")[0]]
    t = [1e3 * r[k] for k in ("t_compute", "t_hbm", "t_ici")]
    unmeasured = "collectives_note" in r      # ICI time unknown: the roofline covers compute and HBM only
    chip_hours = r["paper_images"] / r["images_per_s"] * r["chips"] / 3600
    cpu = f" / {r['cpu_s']:.0f}" if "cpu_s" in r else ""
    paper = "-" if "+smoke" in r["run"] else f"{r['paper_images'] / 1e6:,.0f}, {chip_hours:,.0f}"
    lines.append(
        f"| {r['run']} | {r['chips']} / {r['hosts']} | {r['mesh']['data']} x {r['mesh']['fsdp']} | "
        f"{r['params'] / 1e6:.1f} | {gib(r['state_bytes'])} | {gib(r['argument_bytes'])} / {gib(r['temp_bytes'])} / "
        f"{gib(max(r['output_bytes'] - r['alias_bytes'], 0))} | {gib(r['peak_bytes'])} / {c.hbm_bytes / 2**30:.0f} | "
        f"{'yes' if r['fits'] else '**no**'} | {r['flops'] / 1e12:.2f} | {r['flops_per_image'] / 1e9:.1f} | "
        f"{'not measured' if unmeasured else format(r['collective_bytes'] / 1e6, ',.0f')} | {t[0]:.1f} / {t[1]:.1f} / "
        f"{'?' if unmeasured else format(t[2], '.1f')} | {1e3 * r['roofline_s']:.1f} | "
        f"{r['images_per_s']:,.0f} | {paper} | {r['compile_s']:.0f}{cpu} |")
  return "\n".join(lines)


def chips_table():
  from gendistill import topology  # pylint: disable=g-import-not-at-top
  lines = ["| chip | peak bf16 TFLOP/s | HBM (GiB) | HBM GB/s | ICI GB/s (bidirectional) | source |",
           "|---|---:|---:|---:|---:|---|"]
  for c in topology.CHIPS.values():
    lines.append(f"| {c.name} | {c.peak_flops / 1e12:.0f} | {c.hbm_bytes / 2**30:.0f} | {c.hbm_bandwidth / 1e9:.0f} | "
                 f"{c.ici_bandwidth / 1e9:.0f} | {c.source} |")
  return "\n".join(lines)


def paper_table():
  lines = ["| preset | reported compute | images |", "|---|---|---:|"]
  for k, (what, images) in PAPER_COMPUTE.items():
    lines.append(f"| {k} | {what} | {images / 1e6:,.0f} M |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", default="", help="comma-separated PRESET:DATASET@TOPOLOGY[+SWITCH...]")
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per compile")
  parser.add_argument("--out", default="benchmarks/pod_plan.jsonl", help="JSON lines (appended)")
  parser.add_argument("--md", default="", help="render every row of --out into this markdown file")
  parser.add_argument("--state_runs", default="",
                      help="runs for the state-only table (no compile; seconds each), appended to --out")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child)
    return
  sys.path.insert(0, ROOT)
  for run in [r for r in args.runs.split(",") if r]:
    row = run_one(run, args.timeout)
    print(json.dumps(row), flush=True)
    with open(os.path.join(ROOT, args.out), "a") as f:
      f.write(json.dumps(row) + "\n")
  if args.state_runs:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    state_rows = [dict(state_row(r), status="state") for r in args.state_runs.split(",") if r]
    print(state_table(state_rows))
    with open(os.path.join(ROOT, args.out), "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in state_rows)
  if args.md:
    rows = []
    if os.path.exists(os.path.join(ROOT, args.out)):
      with open(os.path.join(ROOT, args.out)) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__), ROOT), *sys.argv[1:]])
    state_rows = [r for r in rows if r.get("status") == "state"]
    full = [r for r in rows if "+smoke" not in r["run"] and r.get("status") != "state"]
    smoke = [r for r in rows if "+smoke" in r["run"] and r.get("status") != "state"]
    text = (f"# Paper-scale train steps compiled for TPU slices\n\nRendered by `{command}`; each row by "
            f"`python benchmarks/pod_plan.py --runs=<run>` (compiled on a {os.cpu_count()}-core CPU with libtpu, no "
            f"TPU; see the script's docstring for runs and switches).\n\n{table(full)}\n\n"
            + (f"The same steps with a tiny network of the same architecture (`+smoke`: 16 channels, 2 levels, "
               f"4 images per chip), compiled for a 2-host slice first so that a long compile is not spent on a "
               f"bug:\n\n{table(smoke)}\n\n" if smoke else "")
            + (f"TrainState and teacher per chip under each mesh, from the library's rules without compiling "
               f"(activations not included):\n\n{state_table(state_rows)}\n\n" if state_rows else "")
            + f"Chips (published figures):\n\n{chips_table()}\n\nWhat the papers report:\n\n{paper_table()}\n")
    md = os.path.join(ROOT, args.md)
    if os.path.exists(md):   # keep the hand-written notes below the generated tables
      with open(md) as f:
        old = f.read()
      if NOTES in old:
        text += "\n" + old[old.index(NOTES):]
    print(text)
    with open(md, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
