"""Checkpoints through orbax's CheckpointManager: async, atomic, keep the last N.

A checkpoint holds the TrainState and the data iterator's position, so a resumed run continues exactly.
Nothing else in the library touches orbax.
"""
import json
import time
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging

from gendistill import paths
from gendistill import sharding
from gendistill import state as state_lib
from gendistill.data.spec import abstract_batch


# One compiled program, not one per leaf: op-by-op reductions over arrays sharded across processes launch a
# collective each, and with CPU (gloo) collectives those in flight at once can deadlock the processes.
_all_finite = jax.jit(state_lib.tree_all_finite)


class CheckpointError(RuntimeError):
  pass


class Checkpointer:

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = paths.resolve(directory)   # local: absolute; gs://... as given
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(paths.path(self.directory), options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: state_lib.TrainState, data_state: Any, force: bool = False) -> bool:
    """Saves unless a parameter is non-finite (a broken state is never written: that raises)."""
    if not bool(jax.device_get(_all_finite((state.params, state.ema)))):
      raise CheckpointError(f"Refusing to save step {step}: the parameters contain NaN or Inf.")
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state or {})), force=force)

  def restore(self, abstract_state, step: Optional[int] = None, set_aside: Optional[str] = None
              ) -> Tuple[state_lib.TrainState, Any, int]:
    """Restores `step` (default: the newest readable one, falling back to older ones with a warning).

    `abstract_state` (from jax.eval_shape of the objective's init, shardings included if wanted) fixes the
    structure; a checkpoint written for another model fails with a CheckpointError that says so.
    `set_aside`: a folder to move unreadable checkpoints newer than the restored one into (the training loop
    does, so that it rewrites those steps and no reader meets them again); nothing is deleted.
    """
    available = self.all_steps()
    if step is not None and step not in available:
      raise CheckpointError(f"No checkpoint of step {step} in {self.directory}; its checkpoints are steps "
                            f"{available}.")
    steps = [step] if step is not None else list(reversed(available))
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    errors = []
    for s in steps:
      try:
        restored = self._manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                       data=ocp.args.JsonRestore()))
        if errors:
          logging.warning("Restored step %d after failing to read newer checkpoints: %s", s, errors)
          if set_aside:
            self._set_aside([t for t in steps if t > s], set_aside)
        return restored.state, restored.data, s
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"step {s}: {type(e).__name__}: {e}")
        logging.warning("Could not restore checkpoint step %d from %s: %s", s, self.directory, e)
    raise CheckpointError(
        f"Could not restore any checkpoint from {self.directory}. Either the files are corrupt or they were "
        "written for a different model/config than the one built now. Errors:\n  " + "\n  ".join(errors))

  def _set_aside(self, steps, folder: str):
    self._manager.wait_until_finished()
    for t in steps:
      dest = paths.join(folder, f"{t}.{time.strftime('%Y%m%d-%H%M%S')}")
      paths.move(paths.join(self.directory, str(t)), dest)
      logging.warning("Moved the unreadable checkpoint of step %d to %s; the run will rewrite that step.", t, dest)
    self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def checkpoint_dir(workdir: str) -> str:
  return paths.join(workdir, "checkpoints")


def restore_state(workdir: str, objective, spec, step: Optional[int] = None, teacher=None, mesh=None,
                  rules=None):
  """The TrainState saved in a run's workdir (used to load teachers and to export generators).

  The arrays are placed on `mesh` (default: all devices, replicated) with the sharding rules `rules` (a `mesh`
  config section; default: the built-in rule), whatever mesh or number of processes saved them.
  """
  abstract = jax.eval_shape(objective.init, jax.eval_shape(jax.random.key, 0), abstract_batch(spec), teacher)
  mesh = sharding.make_mesh() if mesh is None else mesh
  abstract = sharding.with_shardings(abstract, sharding.tree_shardings(abstract, mesh, rules))
  ckpt = Checkpointer(checkpoint_dir(workdir), async_save=False)
  try:
    state, _, _ = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  return state


def write_run_info(workdir: str, config, spec) -> None:
  """config.json: the run's config and data spec, so the run can be rebuilt (teachers, evaluation)."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  paths.write_text(paths.join(workdir, "config.json"),
                   json.dumps({"config": config.to_dict(), "spec": dataclasses.asdict(spec)}, indent=2, default=list))


def read_run_info(workdir: str):
  """config.json of a run as a dict, None if there is none; a truncated or non-JSON file is a clear error."""
  from gendistill import validation  # pylint: disable=g-import-not-at-top
  path = paths.join(workdir, "config.json")
  if not paths.exists(path):
    return None
  info = validation.read_json(path)
  if not isinstance(info, dict) or "config" not in info or "spec" not in info:
    raise validation.ConfigError(f"{path} is not a gendistill run config (it needs the keys 'config' and 'spec').")
  return info
