"""The loop end to end: smoke runs on the embedded data, exact resume (also after kill -9), bad input."""
import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import edm as edm_config
from gendistill import checkpoint as ckpt_lib
from gendistill import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(state):
  return jax.tree.map(np.asarray, jax.device_get((state.params, state.ema, state.opt_state)))


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("arg", ["toy2d,smoke", "digits,smoke"])
def test_one_step_smoke_run_on_each_embedded_dataset(arg, tmp_path):
  config = edm_config.get_config(arg)
  config.train.update(num_steps=1, sample_every=1)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1
  rows = train.read_metrics(str(tmp_path))
  assert any("denoiser/loss" in r for r in rows)
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  assert evals, rows
  assert glob.glob(str(tmp_path / "samples" / "*.png"))
  assert ckpt_lib.read_run_info(str(tmp_path))["config"]["objective"]["name"] == "edm"


def test_resume_continues_exactly(tmp_path):
  config = edm_config.get_config("toy2d,smoke")
  config.train.update(num_steps=6, checkpoint_every=3)
  full = _params(train.train_and_evaluate(config, str(tmp_path / "full")))
  config.train.num_steps = 3
  train.train_and_evaluate(config, str(tmp_path / "split"))
  config.train.num_steps = 6
  resumed = _params(train.train_and_evaluate(config, str(tmp_path / "split")))
  _assert_same(full, resumed)


def test_kill_9_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
  steps = 200
  args = ["--config=configs/edm.py:toy2d,smoke", f"--config.train.num_steps={steps}",
          "--config.train.checkpoint_every=10", "--config.train.log_every=10", "--config.data.batch_size=64"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  launch = lambda workdir, **kw: subprocess.Popen(
      [sys.executable, "-m", "gendistill.main", f"--workdir={workdir}", *args], cwd=ROOT, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
  killed, straight = str(tmp_path / "killed"), str(tmp_path / "straight")
  proc = launch(killed)
  ckpt_dir = ckpt_lib.checkpoint_dir(killed)
  steps_done = lambda: [int(os.path.basename(d)) for d in glob.glob(os.path.join(ckpt_dir, "*"))
                        if os.path.basename(d).isdigit()]
  deadline = time.time() + 300
  while time.time() < deadline and len(steps_done()) < 2 and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert steps_done() and max(steps_done()) < steps, "the run ended before it could be killed"

  for workdir in (killed, straight):      # resume the killed run; run the other one uninterrupted
    run = launch(workdir)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
  config = edm_config.get_config("toy2d,smoke")
  config.data.batch_size = 64
  from gendistill import data as data_lib, objectives  # pylint: disable=g-import-not-at-top
  spec = data_lib.build(config.data).spec
  objective = objectives.build(config, spec)
  resumed = _params(ckpt_lib.restore_state(killed, objective, spec))
  uninterrupted = _params(ckpt_lib.restore_state(straight, objective, spec))
  assert int(ckpt_lib.restore_state(killed, objective, spec).step) == steps
  _assert_same(uninterrupted, resumed)


def test_changed_config_in_an_existing_workdir_is_a_clear_error(tmp_path):
  config = edm_config.get_config("toy2d,smoke")
  train.train_and_evaluate(config, str(tmp_path))
  config.network.mlp_hidden = 48
  with pytest.raises(ValueError, match="different config.*network"):
    train.train_and_evaluate(config, str(tmp_path))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
  config = edm_config.get_config("toy2d,smoke")
  train.train_and_evaluate(config, str(tmp_path))
  os.remove(tmp_path / "config.json")        # hide the config check: the checkpoint itself must refuse
  config.network.mlp_hidden = 48
  with pytest.raises(ckpt_lib.CheckpointError, match="different model"):
    train.train_and_evaluate(config, str(tmp_path))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  config = edm_config.get_config("toy2d,smoke")
  config.train.update(num_steps=4, checkpoint_every=2)
  train.train_and_evaluate(config, str(tmp_path))
  latest = os.path.join(ckpt_lib.checkpoint_dir(str(tmp_path)), "4")
  for path in glob.glob(os.path.join(latest, "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  from gendistill import data as data_lib, objectives  # pylint: disable=g-import-not-at-top
  spec = data_lib.build(config.data).spec
  state = ckpt_lib.restore_state(str(tmp_path), objectives.build(config, spec), spec)
  assert int(state.step) == 2


def test_divergence_stops_with_a_clear_message_and_no_broken_checkpoint(tmp_path):
  config = edm_config.get_config("toy2d,smoke")
  config.objective.edm.optimizer.lr = 1e30
  config.train.update(num_steps=30, checkpoint_every=1)
  with pytest.raises((FloatingPointError, ckpt_lib.CheckpointError), match="(diverged|NaN or Inf)"):
    train.train_and_evaluate(config, str(tmp_path))
  from gendistill import data as data_lib, objectives  # pylint: disable=g-import-not-at-top
  spec = data_lib.build(config.data).spec
  objective = objectives.build(config, spec)
  for step in ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(tmp_path))).all_steps():
    state = ckpt_lib.restore_state(str(tmp_path), objective, spec, step=step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_step_compiled_ahead_from_shapes_is_the_program_the_run_uses(tmp_path):
  """The demo compiles SiD's step from the teacher's config while the teacher trains (train.compile_ahead): it
  must be the program the step on the real teacher and state lowers to, and drive a run to the same state."""
  from configs import sid as sid_config  # pylint: disable=g-import-not-at-top
  from gendistill import data as data_lib, objectives, sharding, teachers  # pylint: disable=g-import-not-at-top
  teacher_config = edm_config.get_config("digits,smoke")
  train.train_and_evaluate(teacher_config, str(tmp_path / "teacher"))
  config = sid_config.get_config("digits,smoke")
  config.teacher.update(source="workdir", workdir=str(tmp_path / "teacher"))
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    dataset = data_lib.build(config.data)
    objective = objectives.build(config, dataset.spec)
    real_teacher = teachers.build(config.teacher, dataset, config.network)
    abstract_teacher = teachers.abstract(teacher_config, dataset.spec)
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t.params)
    assert shapes(abstract_teacher) == shapes(real_teacher)
    real = sharding.ShardedObjective(objective, dataset.spec, mesh, real_teacher, config.mesh)
    teacher = real.put_teacher(real_teacher)
    state = real.init(jax.random.key(0), teacher)
    batch = real.put_batch(next(dataset.iterator()))
    text = real._step.lower(state, batch, teacher).as_text()  # pylint: disable=protected-access
    ahead = sharding.ShardedObjective(objective, dataset.spec, mesh, abstract_teacher, config.mesh)
    assert ahead.lower_step(config.data.batch_size).as_text() == text
  # The step compiled ahead drives a real run to the same state as the run's own jit.
  compiled = train.compile_ahead(config, abstract_teacher)
  ahead_state = train.train_and_evaluate(config, str(tmp_path / "ahead"), compiled_step=compiled)
  own_state = train.train_and_evaluate(config, str(tmp_path / "own"))
  assert int(ahead_state.step) == int(own_state.step) == config.train.num_steps
  _assert_same(_params(ahead_state), _params(own_state))
