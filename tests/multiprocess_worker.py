"""One process of the multi-process test (tests/test_multiprocess.py): 4 fake CPU devices, gloo collectives.

python tests/multiprocess_worker.py --process_id=I --num_processes=N --port=P --workdir=DIR --out=FILE.npz
    --run=NAME:PRESET:DATA:FSDP [--run=...]

Each run trains `configs/NAME.py:PRESET` with train.train_and_evaluate on a (DATA x FSDP) mesh over the
devices of all processes, in DIR/NAME, each process reading its own share of every batch; then process 0
writes the final parameters, EMA and optimizer state (gathered from all processes) to FILE.npz, with keys
'NAME/<path>'.
"""
import argparse
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configure_process(local_devices: int = 4):
  """Before jax is imported: this process's fake CPU devices."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={local_devices}"])
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)


def run_config(spec: str, steps: int):
  """(name, config) of a --run spec NAME:PRESET:DATA:FSDP ('+' in PRESET for ',')."""
  name, preset, data, fsdp = spec.split(":")
  config = importlib.import_module(f"configs.{name}").get_config(preset.replace("+", ","))
  config.mesh.update(data=int(data), fsdp=int(fsdp), fsdp_min_size=0)
  config.train.update(num_steps=steps, checkpoint_every=steps, log_every=1)
  return name, config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--run", action="append", required=True)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()

  _configure_process()
  import gendistill  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                             process_id=args.process_id, initialization_timeout=120)
  assert jax.process_count() == args.num_processes and jax.local_device_count() == 4, jax.devices()

  from gendistill import sharding, train  # pylint: disable=g-import-not-at-top

  out = {}
  for spec in args.run:
    name, config = run_config(spec, args.steps)
    state = train.train_and_evaluate(config, os.path.join(args.workdir, name))
    tree = {"params": state.params, "ema": state.ema, "opt_state": state.opt_state}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out[f"{name}/{sharding.path_str(path)}"] = sharding.to_host(leaf)   # collective: every process calls it
  if jax.process_index() == 0:
    np.savez(args.out, **out)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
