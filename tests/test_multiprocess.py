"""Two processes x 4 fake CPU devices (jax.distributed on localhost, gloo collectives) run the real loop and end
where one process with 8 devices ends; their checkpoint restores in this one process."""
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import multiprocess_worker as worker
from gendistill import checkpoint as ckpt_lib
from gendistill import data as data_lib
from gendistill import objectives
from gendistill import sharding
from gendistill import train

STEPS = 3
# A distillation objective (generator, fake score, teacher) on a data=1 x fsdp=8 mesh: every large array and
# every batch is split across the two processes.
RUNS = ("dmd:toy2d+smoke:1:8",)


# Selectable with -m multiprocess (part of `make test`: about a minute on 2 cores).
pytestmark = pytest.mark.multiprocess


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp_path):
  port = _free_port()
  cmd = [sys.executable, worker.__file__, "--num_processes=2", f"--port={port}", f"--workdir={tmp_path / 'multi'}",
         f"--out={tmp_path / 'multi.npz'}", f"--steps={STEPS}", *[f"--run={r}" for r in RUNS]]
  logs = [open(tmp_path / f"process_{i}.log", "w+") for i in range(2)]   # pylint: disable=consider-using-with
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=worker.ROOT, stdout=logs[i], stderr=subprocess.STDOUT)
           for i in range(2)]
  deadline = time.time() + 900
  try:
    while any(p.poll() is None for p in procs) and time.time() < deadline:
      if any(p.returncode not in (None, 0) for p in procs):
        break                      # one failed: do not wait for the other to time out
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  tails = []
  for i, log in enumerate(logs):
    log.seek(0)
    tails.append(f"--- process {i} (exit {procs[i].returncode}) ---\n" + "".join(
        line for line in log.readlines()[-60:] if "Gloo" not in line))
    log.close()
  assert all(p.returncode == 0 for p in procs), "\n".join(tails)
  return np.load(tmp_path / "multi.npz")


def test_two_processes_match_one_process_with_eight_devices(tmp_path):
  multi = _launch(tmp_path)
  for run in RUNS:
    name, config = worker.run_config(run, STEPS)
    single = train.train_and_evaluate(config, str(tmp_path / "single" / name))
    tree = {"params": single.params, "ema": single.ema, "opt_state": single.opt_state}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert len(leaves) == len([k for k in multi.files if k.startswith(name + "/")])
    for path, leaf in leaves:
      key = f"{name}/{sharding.path_str(path)}"
      np.testing.assert_allclose(multi[key], np.asarray(leaf), rtol=1e-5, atol=1e-6, err_msg=key)

    # The same losses, logged by process 0 only.
    def losses(workdir):
      return [{k: v for k, v in r.items() if k.endswith("loss")} for r in train.read_metrics(workdir)
              if any(k.endswith("loss") for k in r)]
    multi_losses, single_losses = losses(str(tmp_path / "multi" / name)), losses(str(tmp_path / "single" / name))
    assert len(multi_losses) == STEPS
    for a, b in zip(multi_losses, single_losses):
      assert a.keys() == b.keys()
      np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5, atol=1e-6)

    # The checkpoint the two processes wrote restores in this one process, on one device.
    spec = data_lib.build(config.data).spec
    restored = ckpt_lib.restore_state(str(tmp_path / "multi" / name), objectives.build(config, spec), spec,
                                      mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    for path, leaf in jax.tree_util.tree_flatten_with_path({"params": restored.params, "ema": restored.ema})[0]:
      np.testing.assert_array_equal(np.asarray(leaf), multi[f"{name}/{sharding.path_str(path)}"])


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
