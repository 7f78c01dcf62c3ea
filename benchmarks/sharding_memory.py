"""Per-device memory and step time of the sharded `edm` train step, replicated vs FSDP, on 1/2/4/8 devices.

    .venv/bin/python benchmarks/sharding_memory.py --extras --md=benchmarks/sharding.md   # the table there
    .venv/bin/python benchmarks/sharding_memory.py --devices=1,8 --steps=2 --batch=8 --out=-

The network is EDM's DDPM++ for CIFAR-10 (`nets/unet.py` preset 'cifar10', class-conditional: 55.7M
parameters) trained with the `edm` objective (Adam, EMA), on synthetic 32x32x3 batches. Each (devices, layout)
runs in its own process with that many fake CPU devices (--xla_force_host_platform_device_count):
  replicated   mesh data=N, fsdp=1: every device holds the whole TrainState; the batch is split N ways.
  fsdp         mesh data=1, fsdp=N: the TrainState's large arrays are split N ways (default rule); same batch.
Reported per device:
  state        bytes of the TrainState on one device (params, Adam moments, EMA; from the compiled shardings);
  args/temp    XLA's memory analysis of the compiled step: argument bytes (state + batch; the new state is
               written into the donated buffers) and temporaries (activations, gradients, gathered weights);
  peak         args + temp + non-aliased outputs;
  step time    median wall time of a step after compilation, or '-' with --compile_only or when the whole
               process would need more host RAM than --max_host_gb (all fake devices share the host's RAM).
On a 2-core CPU, fake devices share two cores, so step times show the overhead of the partitioned program,
not a speed-up. Extra rows (--extras) show the compute switches on one device: bf16 compute, remat, micro-batches.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.child_devices}").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)
  import gendistill  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import edm as edm_config  # pylint: disable=g-import-not-at-top
  from gendistill import objectives, sharding  # pylint: disable=g-import-not-at-top
  from gendistill.data import DataSpec  # pylint: disable=g-import-not-at-top

  n = args.child_devices
  config = edm_config.get_config("cifar10")
  config.data.batch_size = args.batch
  config.network.update(dtype=args.dtype, remat=args.remat)
  config.train.microbatches = args.microbatches
  spec = DataSpec("image", (32, 32, 3), 10)
  objective = objectives.build(config, spec)
  data, fsdp = (n, 1) if args.layout == "replicated" else (1, n)
  mesh = sharding.make_mesh(data=data, fsdp=fsdp)
  row = dict(devices=n, layout=args.layout, batch=args.batch, dtype=args.dtype, remat=args.remat,
             microbatches=args.microbatches)
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objective, spec, mesh, None, config.mesh)
    row["params"] = int(sum(np.prod(x.shape) for x in jax.tree.leaves(sharded.abstract_state.params)))
    row["state_total"] = sharding.total_bytes(sharded.abstract_state)
    row["state"] = sharding.bytes_per_device(sharded.abstract_state)
    rng = np.random.default_rng(0)
    host_batch = {"image": rng.uniform(-1, 1, (args.batch, 32, 32, 3)).astype(np.float32),
                  "label": rng.integers(0, 10, (args.batch,)).astype(np.int32)}
    t0 = time.time()
    compiled = sharded.compile_step(args.batch)
    row["compile_s"] = time.time() - t0
    mem = compiled.memory_analysis()
    row.update(args_bytes=mem.argument_size_in_bytes, temp=mem.temp_size_in_bytes,
               out=mem.output_size_in_bytes, alias=mem.alias_size_in_bytes)
    row["peak"] = row["args_bytes"] + row["temp"] + max(row["out"] - row["alias"], 0)
    need_gb = n * row["peak"] / 2**30
    if args.compile_only or need_gb > args.max_host_gb:
      row["step_s"] = None
      row["skipped"] = f"needs ~{need_gb:.1f} GB host RAM" if need_gb > args.max_host_gb else "compile only"
    else:
      state = sharded.init(jax.random.key(0))
      times = []
      for _ in range(args.steps + 1):
        batch = sharded.put_batch(host_batch)
        t0 = time.time()
        state, metrics = sharded.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.time() - t0)
      row["step_s"] = float(np.median(times[1:]))
      row["first_step_s"] = times[0]
      row["measured_state"] = max(
          sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards if s.device == d)
          for d in jax.devices())
      row["loss"] = float(metrics["denoiser/loss"])
  print("RESULT " + json.dumps(row), flush=True)


def mb(x):
  return "-" if x is None else f"{x / 2**20:,.0f}"


def table(rows):
  lines = ["| devices | layout | state / device (MB) | step args (MB) | step temp (MB) | peak / device (MB) | "
           "step time (s) | compile (s) |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    step = "-" if r.get("step_s") is None else f"{r['step_s']:.2f}"
    lines.append(f"| {r['devices']} | {r['layout']} | {mb(r['state'])} | {mb(r['args_bytes'])} | {mb(r['temp'])} | "
                 f"{mb(r['peak'])} | {step} | {r['compile_s']:.0f} |")
  return "\n".join(lines)


def extras_table(rows):
  lines = ["| setting | state / device (MB) | step temp (MB) | peak (MB) | step time (s) |",
           "|---|---:|---:|---:|---:|"]
  for r in rows:
    name = f"dtype={r['dtype']}, remat={r['remat']}, microbatches={r['microbatches']}"
    step = "-" if r.get("step_s") is None else f"{r['step_s']:.2f}"
    lines.append(f"| {name} | {mb(r['state'])} | {mb(r['temp'])} | {mb(r['peak'])} | {step} |")
  return "\n".join(lines)


def run_child(argv):
  cmd = [sys.executable, os.path.abspath(__file__), *argv]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--layouts", default="replicated,fsdp")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--max_host_gb", type=float, default=8.0)
  parser.add_argument("--compile_only", action="store_true")
  parser.add_argument("--extras", action="store_true", help="also bf16 / remat / micro-batch rows on 1 device")
  parser.add_argument("--out", default="-", help="a JSON-lines file for the rows, or - (stdout only)")
  parser.add_argument("--md", default="", help="also write the tables (and this command) to this markdown file")
  # Child-process flags.
  parser.add_argument("--child_devices", type=int, default=0)
  parser.add_argument("--layout", default="replicated")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--remat", default="none")
  parser.add_argument("--microbatches", type=int, default=1)
  args = parser.parse_args()
  if args.child_devices:
    child(args)
    return

  common = [f"--batch={args.batch}", f"--steps={args.steps}", f"--max_host_gb={args.max_host_gb}"]
  common += ["--compile_only"] if args.compile_only else []
  rows = []
  for n in [int(d) for d in args.devices.split(",")]:
    for layout in args.layouts.split(","):
      if n == 1 and layout == "fsdp" and "replicated" in args.layouts:
        continue   # identical to replicated on one device
      row = run_child([f"--child_devices={n}", f"--layout={layout}", *common])
      rows.append(row)
      print(json.dumps(row), flush=True)
  extras = []
  if args.extras:
    for dtype, remat, micro in [("float32", "none", 1), ("bfloat16", "none", 1), ("float32", "full", 1),
                                ("float32", "dots", 1), ("float32", "none", 4)]:
      row = run_child(["--child_devices=1", "--layout=replicated", f"--dtype={dtype}", f"--remat={remat}",
                       f"--microbatches={micro}", *common])
      extras.append(row)
      print(json.dumps(row), flush=True)
  if args.out != "-":
    with open(args.out, "w") as f:
      for r in rows + extras:
        f.write(json.dumps(r) + "\n")
  text = table(rows) + ("\n\n" + extras_table(extras) if extras else "")
  print(text)
  if args.md:
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__), ROOT), *sys.argv[1:]])
    with open(args.md, "w") as f:
      f.write(f"# Sharded train step: per-device memory and step time\n\nGenerated by `{command}` on a "
              f"{os.cpu_count()}-core CPU with fake devices (see the script's docstring for the columns). Network: "
              f"the CIFAR-10 DDPM++ UNet ({rows[0]['params'] / 1e6:.1f}M parameters), `edm` objective, batch "
              f"{args.batch}.\n\n{text}\n")


if __name__ == "__main__":
  main()
