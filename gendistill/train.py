"""train_and_evaluate(config, workdir): the training loop, the same for every objective.

Importable from notebooks and tests; `gendistill.main` is only the command-line wrapper around it.
Order on start: check the whole config (validation.check_config) -> lock the workdir (one writer) -> check
the workdir and a resumed run's config -> build data, teacher, objective -> restore the newest readable
checkpoint if the workdir has one (state, RNG and data position; unreadable newer ones are set aside) ->
otherwise initialise -> drop metric rows the run will redo -> loop -> final grid and evaluation -> final.json.
A checkpoint is written only for a healthy state (_health); SIGTERM saves one and raises Preempted.

Everything runs on the mesh of `config.mesh` (gendistill/sharding.py): the state is initialised directly in its
shards (jit of init with out_shardings, from eval_shape), restored into this mesh's shardings whatever mesh
saved it, and the step is jitted with in/out shardings and donates the state. Every process runs this same
function (multi-host: after jax.distributed.initialize) on its own share of each global batch; all processes
take part in the step, the checkpoints and the sampling; only process 0 writes metrics, grids and logs.
"""
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from gendistill import checkpoint as ckpt_lib
from gendistill import data as data_lib
from gendistill import evaluation
from gendistill import logs
from gendistill import objectives
from gendistill import paths
from gendistill import sharding
from gendistill import teachers
from gendistill import validation

RESUMABLE_SECTIONS = validation.RESUMABLE_SECTIONS
# The skip-fraction stop counts at least this many steps, so that a few early skips do not stop a run.
MIN_STEPS_FOR_SKIP_FRACTION = 100
# Exit status of the launcher after a SIGTERM (preemption): a checkpoint was saved; relaunch to resume.
PREEMPTED_EXIT_CODE = 143


class WorkdirBusy(RuntimeError):
  """Another process holds the workdir's lock."""


# Errors whose message is the whole story (launchers print it without a traceback).
CLEAR_ERRORS = (validation.ConfigError, ckpt_lib.CheckpointError, WorkdirBusy, FloatingPointError,
                FileNotFoundError)


class Preempted(Exception):
  """SIGTERM arrived during training; the state of `step` is saved. Relaunching the same command resumes."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f"Preempted (SIGTERM) at step {step}: saved a checkpoint of step {step} in {workdir}; "
                     "relaunch the same command to resume.")
    self.step = step


def _holder() -> str:
  import socket  # pylint: disable=g-import-not-at-top
  return f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


class WorkdirLock:
  """An exclusive lock on a local workdir (fcntl.flock on WORKDIR/.lock): two writers would mix their checkpoints
  and metrics. The kernel drops the lock when its process ends, kill -9 included, so no stale lock outlives it.
  The file names the holder (pid, host, start time) for the error message of a second process.

  A remote workdir (gs://...) has no such lock: object stores offer no lock that a killed process releases, and
  a preempted pod's lock would block its own relaunch. There WORKDIR/.lock only names the holder: a run that finds
  one logs a warning naming it (the earlier run may still be running, or may have been killed) and takes it over;
  the run deletes it when it ends. Do not start two runs in one remote workdir."""

  def __init__(self, workdir: str):
    self.path = paths.join(workdir, ".lock")
    self._file = None
    if paths.is_remote(workdir):
      if paths.exists(self.path):
        logging.warning("%s names another run (%s): if that run is still running, stop this one (two writers "
                        "mix their checkpoints); a killed or preempted run leaves this file behind.", self.path,
                        paths.read_text(self.path).strip() or "unknown")
      paths.write_text(self.path, _holder() + "\n")
      return
    import fcntl  # pylint: disable=g-import-not-at-top
    self._file = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      holder = self._file.read().strip() or "unknown process"
      self._file.close()
      raise WorkdirBusy(f"{workdir} is in use by another gendistill run ({holder}). Wait for it to finish or "
                        f"stop it, or use another workdir. (The lock is {self.path}; it is released when that "
                        "process ends.)") from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(_holder() + "\n")
    self._file.flush()

  def release(self):
    if self._file is None:   # remote: the file only named the holder
      paths.remove(self.path)
      return
    import fcntl  # pylint: disable=g-import-not-at-top
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


class MetricWriter:
  """Metrics as JSON lines (always) and TensorBoard (when tensorboardX is installed); process 0 only.

  Locally each row is appended to metrics.jsonl. Objects in a remote store cannot be appended to, so there the
  writer keeps the file's rows and rewrites the whole object at every write (one small object per log step)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.path = paths.join(workdir, "metrics.jsonl")
    self._remote = paths.is_remote(workdir)
    self._lines = [json.dumps(r) + "\n" for r in read_metrics(workdir)] if self._remote else None
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(paths.join(workdir, "tensorboard"))
    except ImportError:
      pass

  def write(self, step: int, metrics: Dict[str, Any]):
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    if self._remote:
      self._lines.append(json.dumps(row) + "\n")
      paths.write_lines(self.path, self._lines)
    else:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), step)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str):
  path = paths.join(workdir, "metrics.jsonl")
  if not paths.exists(path):
    return []
  return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


def check_resumable(config: ml_collections.ConfigDict, workdir: str):
  """A workdir's earlier run must have been made by the same config, except the RESUMABLE_SECTIONS. (Paths are
  compared absolute: a config.json written before paths were stored absolute holds them as given.)"""
  saved = ckpt_lib.read_run_info(workdir)
  if saved is not None:
    saved_config = paths.resolve_config(ml_collections.ConfigDict(objectives.migrate_config(saved["config"])))
    validation.check_resume(config, saved_config.to_dict(), workdir)


def _rewrite_metrics(workdir: str, keep: Callable[[Dict[str, Any]], bool]):
  """Drops the rows of metrics.jsonl that `keep` rejects (atomically); a resumed run redoes those steps."""
  rows = read_metrics(workdir)
  kept = [r for r in rows if keep(r)]
  if len(kept) == len(rows):
    return
  path = paths.join(workdir, "metrics.jsonl")
  paths.write_lines(path, [json.dumps(r) + "\n" for r in kept])
  logging.info("Dropped %d rows of %s that the resumed run redoes", len(rows) - len(kept), path)


def _is_eval_row(row) -> bool:
  return any(k.startswith("eval/") for k in row)


def final_results(workdir: str) -> Optional[Dict[str, Any]]:
  """final.json: written once a run's final grid and evaluation are done (a relaunch without it redoes them)."""
  path = paths.join(workdir, "final.json")
  if not paths.exists(path):
    return None
  try:
    return json.loads(paths.read_text(path))
  except json.JSONDecodeError:
    return None      # an interrupted write: the final stage is simply redone


def generate(objective, state, rng, num: int, batch_size: int, num_classes: int, steps=None,
             sharded: Optional[sharding.ShardedObjective] = None, progress: bool = False):
  """`num` samples (class-balanced labels for conditional models) in batches; returns numpy (samples, labels).

  With `sharded` (a ShardedObjective of `objective`) sampling runs on its mesh, split over the batch axes; then
  every process must call this and every process gets all samples. `progress`: a tqdm bar over the samples.
  """
  labels = np.arange(num) % num_classes if num_classes else None
  sample = None if sharded is not None else jax.jit(objective.sample, static_argnums=(2, 4))
  out = []
  starts = range(0, num, batch_size)
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    starts = tqdm.tqdm(starts, desc="sampling", unit="batch", dynamic_ncols=True)
  for i, start in enumerate(starts):
    n = min(batch_size, num - start)
    batch_labels = None if labels is None else labels[start:start + n]
    if sharded is not None:
      out.append(sharded.sample(state, jax.random.fold_in(rng, i), n, batch_labels, steps))
    else:
      batch_labels = None if batch_labels is None else jnp.asarray(batch_labels)
      out.append(np.asarray(sample(state, jax.random.fold_in(rng, i), n, batch_labels, steps)))
  return np.concatenate(out), labels


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, compiled_step=None):
  """Trains config.train.num_steps steps in total (resuming from workdir), then evaluates. Returns the state.
  `compiled_step`: this run's step already compiled by compile_ahead(config, ...).

  The whole config is checked first (validation.check_config): a bad value is a ConfigError naming its key
  before anything is compiled or written. The final grid and evaluation are a stage of their own: a relaunch
  of a trained run whose final.json is missing produces them. SIGTERM saves a checkpoint and raises Preempted.
  """
  validation.check_config(config, jax.process_count())
  # Paths the config names are stored absolute (remote ones as given), so that config.json rebuilds the run
  # from any directory or machine.
  config = paths.resolve_config(config)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    return _train_and_evaluate(config, workdir, mesh, compiled_step)


def _check_workdir(workdir: str):
  """A workdir that holds a run's files but whose checkpoints/ is gone is an error, not a silent restart: the
  new run would append a second curve to the old metrics. (An empty checkpoints/ is a run stopped before its
  first save; that one restarts from step 0.)"""
  leftovers = [f for f in ("config.json", "metrics.jsonl", "final.json") if paths.exists(paths.join(workdir, f))]
  if leftovers and not paths.isdir(ckpt_lib.checkpoint_dir(workdir)):
    raise validation.ConfigError(
        f"{workdir} holds a run ({', '.join(leftovers)}) but its checkpoints/ folder is missing, so it cannot be "
        "resumed. To train from scratch there, remove those files first (or use a new workdir).")


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks after each step (main thread only; elsewhere a no-op)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint after this step, then stopping.")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _health(params_norms, metrics, max_param_norm: float) -> Optional[str]:
  """Why a state must not be kept as a good checkpoint, or None. Catches finite garbage: a parameter norm
  above train.max_param_norm (a blow-up, e.g. lr 1e30 gives ~1e28 while losses are still finite), besides
  non-finite parameters and non-finite losses."""
  for name, norm in params_norms.items():
    if not np.isfinite(norm):
      return f"the parameters of {name} are not finite"
    if max_param_norm and norm > max_param_norm:
      return f"the parameter norm of {name} is {norm:.3g} > train.max_param_norm = {max_param_norm:g}"
  bad = {k: v for k, v in metrics.items() if k.endswith("loss") and not np.isfinite(v)}
  if bad:
    return f"non-finite losses {bad}"
  return None


def _tree_norm(tree):
  """The L2 norm of a pytree, scaled by its largest entry so that finite garbage (~1e28) is not inf in float32."""
  leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.zeros(())
  top = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
  scale = jnp.where(top > 0, top, 1.0)
  return top * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


@jax.jit
def _param_norms(params, ema):
  return {**{r: _tree_norm(p) for r, p in params.items()}, **{f"ema/{r}": _tree_norm(p) for r, p in ema.items()}}


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh, compiled_step=None):
  if not workdir or (paths.exists(workdir) and not paths.isdir(workdir)):
    raise validation.ConfigError(f"--workdir={workdir!r} must be a directory (or a path to create one at).")
  workdir = paths.resolve(workdir)   # local: absolute; gs://... as given
  paths.makedirs(workdir)
  logs.quiet_libraries()
  is_main = jax.process_index() == 0
  lock = WorkdirLock(workdir) if is_main else None
  try:
    return _locked_train_and_evaluate(config, workdir, mesh, compiled_step, is_main)
  finally:
    if lock is not None:
      lock.release()


def _locked_train_and_evaluate(config, workdir, mesh, compiled_step, is_main):
  _check_workdir(workdir)
  check_resumable(config, workdir)
  with validation.building("the run"):   # a ValueError here is a bad setting: a ConfigError with its message
    dataset = data_lib.build(config.data, jax.process_index(), jax.process_count())
    spec = dataset.spec
    validation.check_teacher(config, spec)
    teacher = teachers.build(config.teacher, dataset, config.network)
    objective = objectives.build(config, spec)
    # With teacher.init_workdir, init gets a teacher carrying that run's network, which the students copy.
    init_teacher = teachers.with_init_network(teacher, config.teacher)
    init_teacher = None if init_teacher is teacher else init_teacher
    logging.info("Mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
    sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh,
                                        init_teacher=init_teacher)
    sharding.check_accumulation(sharded, config.train.microbatches, teacher)
  if compiled_step is not None:
    sharded.use_compiled_step(compiled_step)
  teacher = sharded.put_teacher(teacher)
  tc = config.train
  evaluator = evaluation.make_evaluator(
      dataset, config.eval, sharded.batch_sharding if jax.process_count() == 1 else None,  # see its docstring
      progress=_interactive(is_main))
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), max_to_keep=tc.keep_checkpoints)
  writer = None
  try:
    iterator = dataset.iterator()
    rng = jax.random.key(config.seed)
    if ckpt.latest_step() is not None:
      state, data_state, restored_step = ckpt.restore(sharded.abstract_state,
                                                      set_aside=paths.join(workdir, "unreadable_checkpoints"))
      iterator.set_state(data_state)
      logging.info("Resumed from step %d in %s", restored_step, workdir)
    else:
      state = sharded.init(rng, teacher if init_teacher is None else init_teacher)
    start = int(jax.device_get(state.step))
    final = final_results(workdir)
    final_done = final is not None and final.get("step") == start and start >= tc.num_steps
    if is_main:
      ckpt_lib.write_run_info(workdir, config, spec)
      # Rows after the restored step are redone; so is the final evaluation when final.json is missing.
      _rewrite_metrics(workdir, lambda r: r["step"] < start or (r["step"] == start and not (
          start >= tc.num_steps and not final_done and _is_eval_row(r))))
      if not final_done and final is not None:
        paths.remove(paths.join(workdir, "final.json"))

    writer = MetricWriter(workdir, enabled=is_main)
    sample_rng = jax.random.fold_in(rng, 1 << 20)
    toy_reference = dataset.reference(evaluation.SCATTER_POINTS)["x"] if spec.key == "x" and is_main else None
    if final_done:      # a finished run (e.g. a cached teacher): its final samples and eval exist
      logging.info("%s is already trained to step %d (train.num_steps = %d) and evaluated", workdir, start,
                   tc.num_steps)
      return state

    def periodic(state, step: int, final: bool = False):
      # Sampling runs on every process (it is one sharded computation); only process 0 writes.
      results = {}
      if final or (tc.sample_every and step % tc.sample_every == 0):
        save_grid(objective, state, sample_rng, spec, paths.join(workdir, "samples", f"step_{step:08d}.png"),
                  tc.num_grid_samples, sharded=sharded, write=is_main, reference=toy_reference)
      if evaluator is not None and (final or (tc.eval_every and step % tc.eval_every == 0)):
        t0 = time.time()
        samples, labels = generate(objective, state, sample_rng, config.eval.num_samples, config.eval.batch_size,
                                   spec.num_classes, config.eval.steps or None, sharded=sharded,
                                   progress=_interactive(is_main))
        if is_main:
          results = {f"eval/{k}": v for k, v in evaluator(samples, labels).items()}
          results["eval/seconds"] = time.time() - t0
          writer.write(step, results)
          logging.info("step %d eval %s", step, results)
      return results

    if start < tc.num_steps:
      state = _train_loop(config, workdir, state, sharded, teacher, iterator, ckpt, writer, periodic, start,
                          is_main)
    ckpt.wait()
    step = int(jax.device_get(state.step))
    results = periodic(state, step, final=True)
    if is_main:
      skipped = {r: int(v) for r, v in jax.device_get(state.skipped).items()}
      paths.write_text(paths.join(workdir, "final.json"), json.dumps(
          {"step": step, "skipped_updates": skipped, **{k: float(v) for k, v in results.items()}}, indent=2))
    return state
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()


def _train_loop(config, workdir, state, sharded, teacher, iterator, ckpt, writer, periodic, start, is_main):
  tc = config.train
  max_param_norm = float(tc.get("max_param_norm", 0.0))
  max_skipped = float(tc.get("max_skipped_fraction", 1.0))
  progress = _progress_bar(start, tc.num_steps, disable=not is_main)
  nonfinite_logs = 0
  t_last = time.time()
  last_saved = ckpt.latest_step()
  log = logs.TrainLog(start, tc.num_steps, tc.log_every, enabled=is_main)

  def diverged(step, why):
    return FloatingPointError(
        f"Training diverged at step {step}: {why}. "
        + (f"The last good checkpoint is step {last_saved} in {ckpt.directory}; lower the learning rate (or raise "
           "train.max_param_norm if the norm is expected) and resume from it." if last_saved is not None else
           "No step was saved before it; lower the learning rate (or raise train.max_param_norm if the norm is "
           "expected) and start again."))

  with _SigtermFlag() as sigterm:
    for step in range(start, tc.num_steps):
      batch = sharded.put_batch(next(iterator))
      state, metrics = sharded.train_step(state, batch, teacher)
      done = step + 1
      log(done, metrics)
      fetched = None
      if done % tc.log_every == 0 or done == tc.num_steps:
        fetched = jax.device_get(metrics)
        now = time.time()
        fetched["steps_per_second"] = tc.log_every / max(now - t_last, 1e-9)
        t_last = now
        skipped = {r: int(v) for r, v in jax.device_get(state.skipped).items()}
        fetched.update({f"{r}/skipped_total": v for r, v in skipped.items()})
        if all(np.isfinite(v) for v in fetched.values()):
          nonfinite_logs = 0
        else:
          nonfinite_logs += 1
          logging.warning("Non-finite metrics at step %d: %s", done, fetched)
        writer.write(done, fetched)
        if nonfinite_logs >= tc.max_nonfinite_logs:
          raise diverged(done, f"non-finite metrics at {nonfinite_logs} consecutive logs: {fetched}")
        too_many = {r: v for r, v in skipped.items()
                    if v and v > max_skipped * max(done, MIN_STEPS_FOR_SKIP_FRACTION)}
        if too_many:
          raise diverged(done, f"non-finite gradients in {too_many} of the {done} steps so far (more than "
                         f"train.max_skipped_fraction = {max_skipped:g})")
        progress.set_postfix({k: f"{v:.4g}" for k, v in fetched.items() if k.endswith("loss")}, refresh=False)
      progress.update(1)
      stop = sigterm.raised
      if jax.process_count() > 1:   # all processes agree at log steps, so that they all stop at the same step
        stop = False
        if done % tc.log_every == 0:
          from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
          stop = bool(np.any(multihost_utils.process_allgather(np.int32(sigterm.raised))))
      if done % tc.checkpoint_every == 0 or done == tc.num_steps or stop:
        norms = {k: float(v) for k, v in jax.device_get(_param_norms(state.params, state.ema)).items()}
        why = _health(norms, fetched if fetched is not None else jax.device_get(metrics), max_param_norm)
        if why is not None and (done == tc.num_steps or stop or "param" in why):
          raise diverged(done, why)
        if why is not None:
          logging.warning("Not saving step %d: %s", done, why)
        else:
          ckpt.save(done, state, iterator.get_state())
          last_saved = done
      if stop:
        ckpt.wait()
        progress.close()
        raise Preempted(done, workdir)
      if done < tc.num_steps:
        periodic(state, done)
  progress.close()
  return state


def compile_ahead(config: ml_collections.ConfigDict, teacher=None):
  """Compiles the train step of a run of `config` before the run starts, e.g. while its teacher is still being
  trained: `teacher` may be shapes only (teachers.abstract). Returns the compiled step, for
  train_and_evaluate(config, ..., compiled_step=...) in this process; with JAX's persistent compilation cache on
  it is also stored there for later processes (loading it back still takes a while on CPU: ~100 s for the
  digits SiD step against ~260 s to compile). Compiling releases the GIL, so this can run in a thread beside
  another run."""
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    spec = data_lib.build(config.data).spec
    sharded = sharding.ShardedObjective(objectives.build(config, spec), spec, mesh, teacher, config.mesh)
    with logs.compiling(f"the {config.objective.name} train step ahead of time"):
      return sharded.compile_step(config.data.batch_size)


def save_grid(objective, state, rng, spec, path: str, num: int, sharded=None, write: bool = True, reference=None):
  from gendistill import evaluation  # pylint: disable=g-import-not-at-top
  if spec.key == "x":   # a scatter plot (over `reference`, the data) needs more points than an image grid
    num = max(num, evaluation.SCATTER_POINTS)
  samples, labels = generate(objective, state, rng, num, num, spec.num_classes, sharded=sharded)
  if not write:
    return
  if spec.key == "x":
    evaluation.save_scatter(samples, path, reference=reference)
  else:
    ncols = spec.num_classes if spec.num_classes and num % spec.num_classes == 0 else None
    evaluation.save_image_grid(samples, path, ncols=ncols)


def _interactive(is_main: bool) -> bool:
  """Progress bars only on process 0 and only on a terminal (logs stay clean)."""
  return is_main and sys.stderr.isatty()


def _progress_bar(start: int, total: int, disable: bool):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(initial=start, total=total, disable=disable or not sys.stderr.isatty(), dynamic_ncols=True,
                   desc="train")
