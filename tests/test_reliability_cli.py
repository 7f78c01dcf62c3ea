"""Issue 16 through the launcher: SIGTERM (preemption) saves a checkpoint, exits with status 143 and no traceback,
and the resumed run ends bit-equal to an uninterrupted one. (Launcher processes are slow to start on CPU; their
compiled programs come from the persistent cache of tests/conftest.py, shared with test_train's kill -9 test.)"""
import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from configs import edm as edm_config
from gendistill import checkpoint as ckpt_lib
from gendistill import data as data_lib
from gendistill import objectives
from gendistill import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 200
ARGS = ["--config=configs/edm.py:toy2d,smoke", f"--config.train.num_steps={STEPS}",
        "--config.train.checkpoint_every=10", "--config.train.log_every=10", "--config.data.batch_size=64"]


def _launch(workdir):
  return subprocess.Popen([sys.executable, "-m", "gendistill.main", f"--workdir={workdir}", *ARGS], cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _params(workdir):
  config = edm_config.get_config("toy2d,smoke")
  config.data.batch_size = 64
  spec = data_lib.build(config.data).spec
  state = ckpt_lib.restore_state(workdir, objectives.build(config, spec), spec)
  return int(state.step), jax.tree.map(np.asarray, jax.device_get((state.params, state.ema, state.opt_state,
                                                                    state.skipped)))


def test_sigterm_saves_exits_cleanly_and_resumes_bit_exact(tmp_path):
  stopped, straight = str(tmp_path / "stopped"), str(tmp_path / "straight")
  proc = _launch(stopped)
  ckpt_dir = ckpt_lib.checkpoint_dir(stopped)
  deadline = time.time() + 300
  while time.time() < deadline and not glob.glob(os.path.join(ckpt_dir, "1[0-9]")) and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == train.PREEMPTED_EXIT_CODE, err[-3000:]
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
  assert "Preempted (SIGTERM) at step" in err
  saved = max(int(os.path.basename(d)) for d in glob.glob(os.path.join(ckpt_dir, "*")) if os.path.basename(d).isdigit())
  assert saved < STEPS, "the run ended before the signal"
  assert not os.path.exists(os.path.join(stopped, "final.json"))

  for workdir in (stopped, straight):
    run = _launch(workdir)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
  step_a, resumed = _params(stopped)
  step_b, uninterrupted = _params(straight)
  assert step_a == step_b == STEPS
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
  rows = [r["step"] for r in train.read_metrics(stopped) if "denoiser/loss" in r]
  assert rows == list(range(10, STEPS + 1, 10))      # no step logged twice across the stop
