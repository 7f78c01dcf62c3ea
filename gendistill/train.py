"""train_and_evaluate(config, workdir): the training loop, the same for every objective.

Importable from notebooks and tests; `gendistill.main` is only the command-line wrapper around it.
Order on start: build data, teacher, objective -> restore the newest checkpoint if the workdir has one
(state, RNG and data position) -> otherwise initialise -> loop.

Everything runs on the mesh of `config.mesh` (gendistill/sharding.py): the state is initialised directly in its
shards (jit of init with out_shardings, from eval_shape), restored into this mesh's shardings whatever mesh
saved it, and the step is jitted with in/out shardings and donates the state. Every process runs this same
function (multi-host: after jax.distributed.initialize) on its own share of each global batch; all processes
take part in the step, the checkpoints and the sampling; only process 0 writes metrics, grids and logs.
"""
import json
import os
import sys
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
from gendistill import sharding
from gendistill import teachers

# Config sections that may change when a run is resumed; any other difference is an error. (A checkpoint
# restores under any mesh, so a run may move to another number or arrangement of devices.)
RESUMABLE_SECTIONS = ("train", "eval", "sampler", "mesh")


class MetricWriter:
  """Metrics as JSON lines (always) and TensorBoard (when tensorboardX is installed); process 0 only."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.path = os.path.join(workdir, "metrics.jsonl")
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      pass

  def write(self, step: int, metrics: Dict[str, Any]):
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), step)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def check_resumable(config: ml_collections.ConfigDict, workdir: str):
  """A workdir's earlier run must have been made by the same config, except the RESUMABLE_SECTIONS."""
  saved = ckpt_lib.read_run_info(workdir)
  if saved is None:
    return
  old = objectives.migrate_config(saved["config"])
  new = json.loads(json.dumps(config.to_dict(), default=list))
  diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
           if k not in RESUMABLE_SECTIONS and old.get(k) != new.get(k)]
  if diffs:
    raise ValueError(f"{workdir} holds a run with a different config; use a new workdir or the same config. "
                     "Differences (section: saved -> now): " + "; ".join(d[:300] for d in diffs))


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
  `compiled_step`: this run's step already compiled by compile_ahead(config, ...)."""
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    return _train_and_evaluate(config, workdir, mesh, compiled_step)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh, compiled_step=None):
  os.makedirs(workdir, exist_ok=True)
  logs.quiet_libraries()
  is_main = jax.process_index() == 0
  dataset = data_lib.build(config.data, jax.process_index(), jax.process_count())
  spec = dataset.spec
  teacher = teachers.build(config.teacher, dataset, config.network)
  objective = objectives.build(config, spec)
  check_resumable(config, workdir)
  logging.info("Mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())

  sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh)
  sharding.check_accumulation(sharded, config.train.microbatches, teacher)
  if compiled_step is not None:
    sharded.use_compiled_step(compiled_step)
  teacher = sharded.put_teacher(teacher)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), max_to_keep=config.train.keep_checkpoints)
  iterator = dataset.iterator()
  rng = jax.random.key(config.seed)
  if ckpt.latest_step() is not None:
    state, data_state, restored_step = ckpt.restore(sharded.abstract_state)
    iterator.set_state(data_state)
    logging.info("Resumed from step %d in %s", restored_step, workdir)
  else:
    state = sharded.init(rng, teacher)
  if is_main:
    ckpt_lib.write_run_info(workdir, config, spec)

  writer = MetricWriter(workdir, enabled=is_main)
  evaluator = evaluation.make_evaluator(
      dataset, config.eval, sharded.batch_sharding if jax.process_count() == 1 else None,  # see its docstring
      progress=_interactive(is_main))
  sample_rng = jax.random.fold_in(rng, 1 << 20)
  tc = config.train
  start = int(jax.device_get(state.step))
  if start >= tc.num_steps:      # a finished run (e.g. a cached teacher): its final samples and eval exist
    logging.info("%s is already trained to step %d (train.num_steps = %d)", workdir, start, tc.num_steps)
    ckpt.close()
    return state

  toy_reference = dataset.reference(evaluation.SCATTER_POINTS)["x"] if spec.key == "x" and is_main else None

  def periodic(step: int, final: bool = False):
    # Sampling runs on every process (it is one sharded computation); only process 0 writes.
    if final or (tc.sample_every and step % tc.sample_every == 0):
      save_grid(objective, state, sample_rng, spec, os.path.join(workdir, "samples", f"step_{step:08d}.png"),
                tc.num_grid_samples, sharded=sharded, write=is_main, reference=toy_reference)
    if evaluator is not None and (final or (tc.eval_every and step % tc.eval_every == 0)):
      t0 = time.time()
      samples, labels = generate(objective, state, sample_rng, config.eval.num_samples, config.eval.batch_size,
                                 spec.num_classes, config.eval.steps or None, sharded=sharded,
                                 progress=_interactive(is_main))
      if is_main:
        metrics = {f"eval/{k}": v for k, v in evaluator(samples, labels).items()}
        metrics["eval/seconds"] = time.time() - t0
        writer.write(step, metrics)
        logging.info("step %d eval %s", step, metrics)

  progress = _progress_bar(start, tc.num_steps, disable=not is_main)
  nonfinite_logs = 0
  t_last = time.time()
  log = logs.TrainLog(start, tc.num_steps, tc.log_every, enabled=is_main)
  for step in range(start, tc.num_steps):
    batch = sharded.put_batch(next(iterator))
    state, metrics = sharded.train_step(state, batch, teacher)
    done = step + 1
    log(done, metrics)
    if done % tc.log_every == 0 or done == tc.num_steps:
      metrics = jax.device_get(metrics)
      now = time.time()
      metrics["steps_per_second"] = tc.log_every / max(now - t_last, 1e-9)
      t_last = now
      if all(np.isfinite(v) for v in metrics.values()):
        nonfinite_logs = 0
      else:
        nonfinite_logs += 1
        logging.warning("Non-finite metrics at step %d: %s", done, metrics)
        if nonfinite_logs >= tc.max_nonfinite_logs:
          ckpt.close()
          raise FloatingPointError(
              f"Training diverged: non-finite metrics at {nonfinite_logs} consecutive logs (step {done}): "
              f"{metrics}. The last good checkpoint is step {ckpt.latest_step()} in {workdir}.")
      writer.write(done, metrics)
      progress.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k.endswith("loss")}, refresh=False)
    progress.update(1)
    if done % tc.checkpoint_every == 0 or done == tc.num_steps:
      ckpt.save(done, state, iterator.get_state())
    if done < tc.num_steps:
      periodic(done)
  progress.close()
  ckpt.wait()
  periodic(int(jax.device_get(state.step)), final=True)
  ckpt.close()
  writer.close()
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
  os.makedirs(os.path.dirname(path), exist_ok=True)
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
