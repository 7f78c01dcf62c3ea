"""A teacher is frozen params plus an apply function with the network signature.

It is passed to `train_step` as an argument (its params are a pytree argument, never baked into the compiled
program and never donated). Sources: `analytic` (exact Gaussian-mixture denoiser), `from_workdir` (a run of
this library, e.g. an `edm` teacher), or any user apply function via `Teacher(params, apply_fn, num_classes)`.
"""
import json
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from gendistill import checkpoint
from gendistill import convert
from gendistill import nets
from gendistill import objectives
from gendistill import paths
from gendistill.data.spec import DataSpec, abstract_batch
from gendistill.diffusion.guidance import bind_denoiser
from gendistill.teachers import analytic


@struct.dataclass
class Teacher:
  params: Any
  apply_fn: Callable = struct.field(pytree_node=False)   # (params, x, sigma, labels, train=False, rngs=None)
  num_classes: int = struct.field(pytree_node=False, default=0)
  # Only in the teacher given to `objective.init` (see with_init_network): the parameters the students start from
  # instead of `params` (a pre-trained network of the same data, e.g. beside the analytic teacher).
  init_params: Any = None

  def __call__(self, x, sigma, labels=None, train=False, rngs=None):
    return self.apply_fn(self.params, x, sigma, labels, train=train, rngs=rngs)

  def denoise_fn(self, labels=None, guidance=1.0):
    """A sampler's denoise_fn(x, sigma) with one-hot labels and an optional CFG scale bound."""
    return bind_denoiser(self.apply_fn, self.params, labels, guidance)


def gaussian_mixture(weights, means, covs) -> Teacher:
  return Teacher(params=analytic.mixture_params(weights, means, covs), apply_fn=analytic.gmm_denoise)


def teacher_config() -> ml_collections.ConfigDict:
  """The `teacher` config section. source: none | analytic (the data's own mixture) | workdir (a run of ours) |
  converted (workdir = a directory written by `python -m gendistill.convert`) | random (a randomly initialised network of the run's `network` section: smoke tests without a trained teacher).
  init_workdir: a run of ours (e.g. an `edm` run on the same data) whose exported network the student networks
  start from instead of the teacher's parameters ('' = from the teacher where it matches, see the objective's
  `init`); its network must match the run's `network` section."""
  return ml_collections.ConfigDict(dict(source="none", workdir="", step=-1, init_workdir=""))


def from_workdir(workdir: str, step: Optional[int] = None) -> Teacher:
  """The exported network (EMA where the objective keeps one) of a finished run of this library."""
  config_path = paths.join(workdir, "config.json")
  if not paths.exists(config_path):
    raise FileNotFoundError(f"No run of gendistill in {workdir!r} (missing config.json).")
  saved = json.loads(paths.read_text(config_path))
  config = ml_collections.ConfigDict(objectives.migrate_config(saved["config"]))
  spec = DataSpec(**saved["spec"])
  objective = objectives.build(config, spec)
  state = checkpoint.restore_state(workdir, objective, spec, step=None if step in (None, -1) else step,
                                   teacher=abstract_for_run(config, spec))
  return _exported(objective, state, spec)


def with_init_network(teacher: Optional[Teacher], cfg: ml_collections.ConfigDict) -> Optional[Teacher]:
  """The teacher to give `objective.init`: with cfg.init_workdir set, it carries that run's exported network as
  `init_params`, which the students copy instead of the teacher's own parameters (the analogue of starting from
  the teacher's weights when the teacher is analytic or of another kind); train steps get the plain teacher.
  Without a teacher (source 'none') it is a stand-in that holds only the network to start from."""
  if not cfg.get("init_workdir"):
    return teacher
  start = from_workdir(cfg.init_workdir)
  if teacher is None:
    return Teacher(params=None, apply_fn=start.apply_fn, num_classes=start.num_classes, init_params=start.params)
  return teacher.replace(init_params=start.params)


def abstract_for_run(config: ml_collections.ConfigDict, spec) -> Optional[Teacher]:
  """Shapes standing in for the teacher a run of `config` starts or started from (None if it has none): a
  denoiser of the run's `network` section (the architecture every network teacher has: the presets set it to the
  teacher's) with jax.ShapeDtypeStruct params and the network's real apply function. Enough to rebuild the
  structure of the run's TrainState (an init that copies the teacher copies a tree of these shapes) without
  loading the teacher, which may live on another machine, and to compile a train step ahead of time, e.g. for a
  TPU slice (gendistill.topology)."""
  if config.teacher.source == "none":
    return None
  return jax.eval_shape(lambda: random_network(config.network, spec))


def _exported(objective, state, spec) -> Teacher:
  role = objective.export_role
  params = state.ema[role] if role in state.ema else state.params[role]
  return Teacher(params=params, apply_fn=objective.apply_fn, num_classes=spec.num_classes)


def abstract(config: ml_collections.ConfigDict, spec) -> Teacher:
  """The teacher a run of `config` will export, as shapes (jax.ShapeDtypeStruct params), before that run exists:
  enough to compile a distillation step ahead of time (`train.compile_ahead`). For runs whose own init needs no
  teacher (e.g. `edm`)."""
  objective = objectives.build(config, spec)
  state = jax.eval_shape(objective.init, jax.eval_shape(jax.random.key, 0), abstract_batch(spec), None)
  return _exported(objective, state, spec)


def random_network(network_cfg: ml_collections.ConfigDict, spec, seed: int = 0) -> Teacher:
  """An untrained denoiser of `network_cfg` (built by the same adapter as the students): the shapes of a real
  teacher, for smoke runs and tests."""
  network = nets.build_networks(network_cfg, spec, {"teacher": nets.DENOISER})["teacher"]
  x = jnp.zeros((2,) + tuple(spec.shape), jnp.float32)
  labels = nets.one_hot_labels(jnp.zeros((x.shape[0],), jnp.int32), spec.num_classes) if spec.num_classes else None
  params = network.init(jax.random.key(seed), x, jnp.ones((x.shape[0],)), labels)
  return Teacher(params=params, apply_fn=network.apply, num_classes=spec.num_classes)


def build(cfg: ml_collections.ConfigDict, dataset, network: Optional[ml_collections.ConfigDict] = None
          ) -> Optional[Teacher]:
  """The teacher a run's config asks for, or None. `network`: the run's network section (for source='random')."""
  if cfg.source == "none":
    return None
  if cfg.source == "analytic":
    if dataset.mixture is None:   # the analytic teacher is the exact denoiser of the data's own mixture
      raise ValueError("teacher.source='analytic' needs data with a known Gaussian mixture (toy2d kinds ring8, "
                       "grid25 and their _unequal forms, family:SEED, or 'mixture'); this data has none (e.g. "
                       "toy2d_kind='points'): train an edm teacher on it (configs/edm.py) and use "
                       "teacher.source='workdir' with teacher.workdir=that run.")
    m = dataset.mixture
    return gaussian_mixture(m.weights, m.means, m.covs)
  if cfg.source == "workdir":
    if not cfg.workdir:
      raise ValueError("teacher.source='workdir' needs teacher.workdir.")
    return from_workdir(cfg.workdir, cfg.step)
  if cfg.source == "converted":  # a published network converted by `python -m gendistill.convert`
    if not cfg.workdir:
      raise ValueError("teacher.source='converted' needs teacher.workdir (the directory gendistill.convert wrote).")
    return convert.load_teacher(cfg.workdir)
  if cfg.source == "random":
    if network is None:
      raise ValueError("teacher.source='random' needs the run's network config: build(cfg, dataset, network).")
    return random_network(network, dataset.spec)
  raise ValueError(f"Unknown teacher.source {cfg.source!r}; expected none, analytic, workdir, converted or random.")


def device_put(teacher: Optional[Teacher]):
  return None if teacher is None else jax.device_put(teacher)
