"""Issue 16: nothing lost, nothing hidden, every bad input a clear error. One test (or more) per numbered defect;
toy2d MLP smoke runs through the Python API (seconds each). The launcher-level checks (SIGTERM) are in
test_reliability_cli.py; benchmarks/bad_inputs.py runs the large battery through the command lines."""
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import edm as edm_config
from configs import sid as sid_config
from gendistill import checkpoint as ckpt_lib
from gendistill import data as data_lib
from gendistill import evaluate
from gendistill import objectives
from gendistill import state as state_lib
from gendistill import teachers
from gendistill import train
from gendistill import validation


def _config(**train_kw):
  config = edm_config.get_config("toy2d,smoke")
  config.train.update(**train_kw)
  return config


def _steps(workdir):
  return ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(workdir)), async_save=False).all_steps()


# 1. keep_checkpoints=0 deleted every checkpoint of an existing run.
def test_keep_checkpoints_zero_is_an_error_and_keeps_the_checkpoints(tmp_path):
  train.train_and_evaluate(_config(num_steps=2), str(tmp_path))
  before = _steps(tmp_path)
  with pytest.raises(validation.ConfigError, match="train.keep_checkpoints = 0"):
    train.train_and_evaluate(_config(num_steps=4, keep_checkpoints=0), str(tmp_path))
  assert _steps(tmp_path) == before == [1, 2]


# 2. The final grid and evaluation are a resumable stage; bad eval settings fail before training.
def test_relaunch_of_a_trained_run_without_final_results_produces_them(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(), workdir)
  final = train.final_results(workdir)
  assert final["step"] == 2 and "eval/mmd2" in final
  # A crash during the final stage: the last checkpoint exists, the final results and the eval row do not.
  os.remove(os.path.join(workdir, "final.json"))
  shutil.rmtree(os.path.join(workdir, "samples"))
  train.train_and_evaluate(_config(), workdir)
  assert train.final_results(workdir)["step"] == 2
  assert glob.glob(os.path.join(workdir, "samples", "*.png"))
  evals = [r for r in train.read_metrics(workdir) if "eval/mmd2" in r]
  assert [r["step"] for r in evals] == [2]          # redone once, not duplicated
  # Relaunching a complete run does nothing more.
  train.train_and_evaluate(_config(), workdir)
  assert len([r for r in train.read_metrics(workdir) if "eval/mmd2" in r]) == 1


@pytest.mark.parametrize("key,value", [("eval.num_samples", 0), ("eval.batch_size", -1),
                                       ("train.num_grid_samples", 0)])
def test_bad_final_eval_settings_fail_before_training(key, value, tmp_path):
  config = _config()
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(validation.ConfigError, match=key.replace(".", r"\.")):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)                    # nothing compiled, nothing written


# 3. A health check decides the last good checkpoint; non-finite learning rates are config errors.
def test_finite_garbage_is_never_a_good_checkpoint(tmp_path):
  config = _config(num_steps=6, checkpoint_every=1)
  config.objective.edm.optimizer.update(lr=1e30)
  with pytest.raises(FloatingPointError, match="parameter norm") as err:
    train.train_and_evaluate(config, str(tmp_path))
  spec = data_lib.build(config.data).spec
  objective = objectives.build(config, spec)
  for step in _steps(tmp_path):
    state = ckpt_lib.restore_state(str(tmp_path), objective, spec, step=step)
    norm = float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(state.params))))
    assert norm < config.train.max_param_norm
  message = str(err.value)
  if "last good checkpoint is step " in message:
    named = int(message.split("last good checkpoint is step ")[1].split()[0])
    assert named in _steps(tmp_path) and message.endswith("resume from it.")
  else:
    assert "No step was saved before it" in message and message.endswith("start again.")


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0, -1e-3])
def test_non_finite_or_non_positive_learning_rate_is_a_config_error(lr, tmp_path):
  config = _config()
  config.objective.edm.optimizer.lr = lr
  with pytest.raises(validation.ConfigError, match=r"objective\.edm\.optimizer\.lr"):
    train.train_and_evaluate(config, str(tmp_path))


# 4. Skipped updates are counted per role over the whole run; too many stop it; nan_to_num hides nothing.
def test_skipped_updates_are_counted_logged_and_stop_the_run(tmp_path):
  config = _config(num_steps=12, max_nonfinite_logs=100, checkpoint_every=100)
  config.objective.edm.p_std = 1e30            # sigma = inf: every gradient is NaN, every update skipped
  with pytest.raises(FloatingPointError, match="non-finite gradients in {'denoiser': 6}"):
    train.train_and_evaluate(config, str(tmp_path))
  rows = [r for r in train.read_metrics(str(tmp_path)) if "denoiser/skipped_total" in r]
  assert [r["denoiser/skipped_total"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert not _steps(tmp_path)                  # nothing saved from states with NaN losses


def test_apply_gradients_counts_skips_over_the_run():
  tx = state_lib.make_optimizer(state_lib.optimizer_config(lr=0.1))
  state = state_lib.create(jax.random.key(0), {"a": jnp.ones(3)}, {"a": tx})
  nan = jnp.full(3, jnp.nan)
  for grads, enabled in ((nan, True), (jnp.ones(3), True), (nan, True), (nan, False)):
    state, metrics = state_lib.apply_gradients(state, "a", grads, tx, enabled=enabled)
  assert int(state.skipped["a"]) == 2              # the gated-off step is not a skip
  assert float(metrics["a/skipped_nonfinite"]) == 0.0   # the per-step flag alone would have shown nothing


def test_nan_teacher_in_sid_is_counted_despite_nan_to_num():
  config = sid_config.get_config("toy2d,smoke")
  assert config.objective.sid.nan_to_num
  dataset = data_lib.build(config.data)
  objective = objectives.build(config, dataset.spec)
  teacher = teachers.build(config.teacher, dataset, config.network)
  nan_teacher = teacher.replace(params=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), teacher.params))
  batch = jax.tree.map(jnp.asarray, next(dataset.iterator()))
  state = objective.init(jax.random.key(0), batch, teacher)
  step = jax.jit(objective.train_step)
  good, _ = step(state, batch, teacher)
  assert {r: int(v) for r, v in good.skipped.items()} == {"generator": 0, "fake_score": 0}
  bad, _ = step(state, batch, nan_teacher)
  assert int(bad.skipped["generator"]) == 1 and int(bad.skipped["fake_score"]) == 0


# 5. Two writers on one workdir.
def test_second_writer_on_a_workdir_is_refused_naming_the_first(tmp_path):
  holder = train.WorkdirLock(str(tmp_path))
  try:
    with pytest.raises(train.WorkdirBusy, match=f"pid {os.getpid()}"):
      train.train_and_evaluate(_config(), str(tmp_path))
  finally:
    holder.release()
  train.train_and_evaluate(_config(), str(tmp_path))     # free again once the holder is gone


# 6. Silent acceptance.
def test_misspelt_preset_flag_is_an_error():
  with pytest.raises(ValueError, match="Unknown preset flag.*smoky"):
    edm_config.get_config("toy2d,smoky")
  with pytest.raises(ValueError, match="Unknown preset flag.*smok"):
    sid_config.get_config("digits,smok,teacher=/x")


def test_teacher_flag_is_read_or_refused_never_ignored():
  from configs import add as add_config  # pylint: disable=g-import-not-at-top
  from configs import ign as ign_config  # pylint: disable=g-import-not-at-top
  assert add_config.get_config("digits,teacher=/t").teacher.workdir == "/t"
  cifar = add_config.get_config("cifar10,teacher=/c")
  assert (cifar.teacher.source, cifar.teacher.workdir) == ("converted", "/c")
  for preset in (ign_config, edm_config):     # they train without a teacher
    with pytest.raises(ValueError, match="teacher=.*remove it"):
      preset.get_config("digits,teacher=/t")


def test_teacher_workdir_on_an_analytic_preset_is_an_error(tmp_path):
  with pytest.raises(validation.ConfigError, match="teacher.workdir"):
    train.train_and_evaluate(sid_config.get_config(f"toy2d,smoke,teacher={tmp_path}"), str(tmp_path / "run"))


def test_workdir_whose_checkpoints_vanished_is_an_error(tmp_path):
  train.train_and_evaluate(_config(), str(tmp_path))
  shutil.rmtree(ckpt_lib.checkpoint_dir(str(tmp_path)))
  rows = train.read_metrics(str(tmp_path))
  with pytest.raises(validation.ConfigError, match="checkpoints/ folder is missing"):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert train.read_metrics(str(tmp_path)) == rows


def test_teacher_of_another_dataset_or_resolution_is_an_error(tmp_path):
  teacher_dir = str(tmp_path / "teacher")
  train.train_and_evaluate(_config(), teacher_dir)      # a toy2d teacher
  config = sid_config.get_config("digits,smoke")
  config.teacher.update(source="workdir", workdir=teacher_dir)
  with pytest.raises(validation.ConfigError, match=r"data shape \(16, 16, 1\).*trained on \(2,\)"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


# 7. After a fallback from a corrupt newest checkpoint, that step is set aside and rewritten.
def test_corrupt_newest_checkpoint_is_set_aside_and_rewritten(tmp_path):
  config = _config(num_steps=4, checkpoint_every=2)
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  for path in glob.glob(os.path.join(ckpt_lib.checkpoint_dir(workdir), "4", "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  os.remove(os.path.join(workdir, "final.json"))
  train.train_and_evaluate(config, workdir)
  assert _steps(tmp_path) == [2, 4]
  assert glob.glob(os.path.join(workdir, "unreadable_checkpoints", "4.*"))     # kept aside, not deleted
  spec = data_lib.build(config.data).spec
  state = ckpt_lib.restore_state(workdir, objectives.build(config, spec), spec, step=4)
  assert int(state.step) == 4
  assert evaluate.evaluate_run(workdir, step=4, num_samples=8, batch_size=8)["step"] == 4


# 8. Raw errors become clear ones.
@pytest.mark.parametrize("key,value", [("train.checkpoint_every", 0), ("train.log_every", 0),
                                       ("train.num_steps", -5), ("data.batch_size", 0),
                                       ("sampler.num_steps", 0), ("train.max_skipped_fraction", 2.0)])
def test_bad_train_settings_name_their_key(key, value, tmp_path):
  config = _config()
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(validation.ConfigError, match=key.replace(".", r"\.")):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train_and_evaluate(_config(), workdir)
  return workdir


@pytest.mark.parametrize("kwargs,named", [(dict(num_samples=0), "num_samples"), (dict(num_samples=-5), "num_samples"),
                                          (dict(batch_size=0), "batch_size"), (dict(steps=-1), "steps"),
                                          (dict(step=7), "No checkpoint of step 7")])
def test_bad_evaluate_arguments_name_their_key(trained, kwargs, named):
  with pytest.raises((validation.ConfigError, ckpt_lib.CheckpointError), match=named):
    evaluate.evaluate_run(trained, **{"num_samples": 8, "batch_size": 8, **kwargs})


def test_mis_shaped_ref_stats_fail_before_sampling(trained, tmp_path):
  weights, stats = str(tmp_path / "w.npz"), str(tmp_path / "stats.npz")
  np.savez(weights, x=np.zeros(1))
  np.savez(stats, mu=np.zeros(64), sigma=np.eye(64))
  with pytest.raises(validation.ConfigError, match=r"ref_stats.*mu of shape \(2048,\).*mu \(64,\)"):
    evaluate.evaluate_run(trained, num_samples=8, batch_size=8, inception_weights=weights, ref_stats_path=stats)
  config = _config()
  config.eval.update(inception_weights=weights, ref_stats=stats)
  with pytest.raises(validation.ConfigError, match=r"eval\.ref_stats"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_truncated_config_json_names_the_file(trained, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(trained, workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[: len(text) // 2])
  with pytest.raises(validation.ConfigError, match="config.json.*not valid JSON"):
    evaluate.evaluate_run(workdir, num_samples=8, batch_size=8)
  with pytest.raises(validation.ConfigError, match="config.json.*not valid JSON"):
    train.train_and_evaluate(_config(), workdir)


def test_resume_with_a_changed_key_names_its_path(trained):
  config = _config()
  config.objective.edm.optimizer.lr = 2e-3
  with pytest.raises(validation.ConfigError, match=r"objective\.edm\.optimizer\.lr: 0\.001 -> 0\.002"):
    train.train_and_evaluate(config, trained)


# 9. Resumes do not duplicate metric rows.
def test_resume_drops_the_metric_rows_it_redoes(tmp_path):
  workdir = str(tmp_path)
  config = _config(num_steps=5, checkpoint_every=3)
  train.train_and_evaluate(config, workdir)
  # A kill after steps 4 and 5 were logged but before step 5 was saved.
  shutil.rmtree(os.path.join(ckpt_lib.checkpoint_dir(workdir), "5"))
  os.remove(os.path.join(workdir, "final.json"))
  train.train_and_evaluate(config, workdir)
  steps = [r["step"] for r in train.read_metrics(workdir) if "denoiser/loss" in r]
  assert steps == [1, 2, 3, 4, 5]
  with open(os.path.join(workdir, "final.json")) as f:
    assert json.load(f)["step"] == 5
