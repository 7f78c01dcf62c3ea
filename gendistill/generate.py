"""Write samples of a run: python -m gendistill.generate --workdir=RUN --out=DIR|FILE.png|FILE.npz [flags].

    python -m gendistill.generate --workdir=workdirs/demo/sid --seeds=0-99 --out=samples/          # 100 PNGs
    python -m gendistill.generate --workdir=workdirs/demo/sid --seeds=0-99 --grid --out=grid.png   # one grid
    python -m gendistill.generate --workdir=workdirs/demo/teacher --num=50000 --out=edm.npz --steps=18
    python -m gendistill.generate --network=sid.safetensors --seeds=0-99 --out=samples/   # an exported file

`--network` takes instead of a workdir a file written by `python -m gendistill.convert --export RUN FILE`
(.safetensors or .pt): it holds the exported network and the description of the run that trained it (its
config, data spec and step), so sampling is the run's own (a one-step generator, a few-step sampler, Heun for
an `edm` teacher) and gives the same samples as --workdir=RUN. Objectives whose sampler needs more of the
training state than the network (state.extra, e.g. IGN's noise statistics) need --workdir.

Only the run's own checkpoint is read: the objective's sampler uses the exported network (the generator's EMA
for a student, the denoiser's EMA with Heun for an `edm` run), never the teacher, so a one-step or few-step
student samples without its teacher's workdir. Shapes of a state whose init copies a teacher are taken from
the run's `network` section instead.

Sample i depends only on its seed (as in EDM's generate.py): its noise comes from jax.random.key(seed) and its
class is `--class` or, for a class-conditional run, seed % num_classes (so a grid with one column per class
shows every class). Batches of seeds are sampled in one jitted call, split over all devices.

Outputs: a directory gets one PNG per sample (`{seed:06d}.png`); `--grid` with a `.png` path gets one grid with
padding between tiles (toy 2-D samples: a scatter plot over the data); a `.npz` gets `images` (uint8
[N, H, W, C], EDM's quantisation) or `x` (float32 [N, 2]) plus `labels` and `seeds`.
"""
import dataclasses
import io
import json
import math
import re
import sys
from typing import Optional, Sequence

from absl import app, flags

import gendistill  # noqa: F401  (CPU flags before jax starts)
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gendistill import checkpoint as ckpt_lib
from gendistill import logs
from gendistill import objectives
from gendistill import paths
from gendistill import sharding
from gendistill import teachers
from gendistill.data import DataSpec
from gendistill.evaluation import grid as grid_lib

_NETWORK = _WORKDIR = _CHECKPOINT = _OUT = _NUM = _SEEDS = _CLASS = _GUIDANCE = _STEPS = _GRID = _BATCH = None


def define_flags():
  """The command line's flags (defined only when run as a program, so that importing this module for
  `load`/`write` defines no flags next to another program's)."""
  global _WORKDIR, _CHECKPOINT, _OUT, _NUM, _SEEDS, _CLASS, _GUIDANCE, _STEPS, _GRID, _BATCH
  _WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json and checkpoints/).")
  global _NETWORK
  _NETWORK = flags.DEFINE_string("network", None, "Instead of --workdir: a .safetensors/.pt file written by "
                                 "`python -m gendistill.convert --export RUN FILE`.")
  _CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the newest).")
  _OUT = flags.DEFINE_string("out", None, "A directory (one PNG per sample), a .png (with --grid) or a .npz file.")
  _NUM = flags.DEFINE_integer("num", None, "Number of samples: seeds 0..num-1 (or use --seeds).")
  _SEEDS = flags.DEFINE_string("seeds", None, "Seeds, e.g. '0-63' or '1,5,10-19' (default: 0..num-1).")
  _CLASS = flags.DEFINE_integer("class", None, "Class of every sample (default: seed % num_classes).")
  _GUIDANCE = flags.DEFINE_float("guidance", None, "Classifier-free guidance scale of the run's diffusion sampler "
                                 "(sampler.guidance; used by `edm` runs; needs a network trained with label dropout).")
  _STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: the objective's).")
  _GRID = flags.DEFINE_bool("grid", False, "Write one grid PNG (or a scatter plot for 2-D samples) to --out.")
  _BATCH = flags.DEFINE_integer("batch_size", 64, "Samples per jitted call (rounded up to the device count).")


def parse_seeds(text: str) -> list:
  """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (EDM's syntax; ranges inclusive)."""
  seeds = []
  for part in text.split(","):
    part = part.strip()
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not m:
      raise ValueError(f"--seeds: cannot parse {part!r}; expected e.g. '0-63' or '1,5,10-19'.")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if hi < lo:
      raise ValueError(f"--seeds: empty range {part!r}.")
    seeds.extend(range(lo, hi + 1))
  return seeds


@dataclasses.dataclass
class Generator:
  """A run's exported sampler, restored from its workdir: `generator(seeds, labels) -> numpy samples`."""
  objective: objectives.Objective
  spec: DataSpec
  state: object
  mesh: jax.sharding.Mesh
  config: ml_collections.ConfigDict
  steps: Optional[int] = None

  def __post_init__(self):
    objective, steps = self.objective, self.steps

    def sample(state, key_data, labels):
      # One sample per seed: the objective's sampler with num=1 under vmap, so sample i sees only key i.
      def one(k, label):
        label = None if label is None else label[None]
        return objective.sample(state, jax.random.wrap_key_data(k), 1, label, steps)[0]
      return jax.vmap(one)(key_data, labels)
    self._sample = jax.jit(sample, out_shardings=sharding.batch_sharding(self.mesh))

  def labels_for(self, seeds: Sequence[int], class_idx: Optional[int] = None) -> Optional[np.ndarray]:
    n = self.spec.num_classes
    if not n:
      if class_idx is not None:
        raise ValueError("--class: this run's model is unconditional (its data has no labels).")
      return None
    if class_idx is not None:
      if not 0 <= class_idx < n:
        raise ValueError(f"--class={class_idx}: the run's model has {n} classes (0..{n - 1}).")
      return np.full(len(seeds), class_idx, np.int32)
    return (np.asarray(seeds) % n).astype(np.int32)

  def __call__(self, seeds: Sequence[int], labels: Optional[np.ndarray] = None, batch_size: int = 64,
               progress: bool = False) -> np.ndarray:
    """Samples (float32, the data's range) for `seeds` in order; batches are padded to the device count."""
    seeds = np.asarray(seeds, np.uint32)
    shards = sharding.num_batch_shards(self.mesh)
    batch = shards * math.ceil(max(1, min(batch_size, len(seeds))) / shards)
    out = []
    starts = range(0, len(seeds), batch)
    if progress:
      import tqdm  # pylint: disable=g-import-not-at-top
      starts = tqdm.tqdm(starts, desc="generate", unit="batch", dynamic_ncols=True)
    in_sharding = sharding.batch_sharding(self.mesh)
    for start in starts:
      chunk = seeds[start:start + batch]
      pad = batch - len(chunk)
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad)])
      keys = np.asarray(jax.vmap(lambda s: jax.random.key_data(jax.random.key(s)))(jnp.asarray(padded)))
      lab = None
      if labels is not None:
        lab_chunk = labels[start:start + batch]
        lab = jax.device_put(np.concatenate([lab_chunk, np.repeat(lab_chunk[-1:], pad)]), in_sharding)
      # The first call compiles (minutes for a large UNet on a CPU): say so, and mute XLA's slow-compile alarm.
      with logs.compiling("the sampler", enabled=not out):
        x = self._sample(self.state, jax.device_put(keys, in_sharding), lab)
      out.append(np.asarray(jax.device_get(x))[:len(chunk)])
    return np.concatenate(out)


def load(workdir: str, step: Optional[int] = None, steps: Optional[int] = None,
         guidance: Optional[float] = None, mesh=None) -> Generator:
  """The exported sampler of the run in `workdir` at checkpoint `step` (default: the newest)."""
  info = ckpt_lib.read_run_info(workdir)
  if info is None:
    raise FileNotFoundError(f"{workdir!r} holds no gendistill run (config.json is missing); pass the workdir "
                            "of a run made by `python -m gendistill.main`.")
  config = ml_collections.ConfigDict(objectives.migrate_config(info["config"]))
  if guidance is not None:
    config.sampler.guidance = float(guidance)
  spec = DataSpec(**{**info["spec"], "shape": tuple(info["spec"]["shape"])})
  objective = objectives.build(config, spec)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1))) if mesh is None else mesh
  state = ckpt_lib.restore_state(workdir, objective, spec, step=step, teacher=teachers.abstract_for_run(config, spec),
                                 mesh=mesh, rules=config.get("mesh"))
  return Generator(objective=objective, spec=spec, state=state, mesh=mesh, config=config, steps=steps)


def load_exported(path: str, steps: Optional[int] = None, guidance: Optional[float] = None, mesh=None
                  ) -> Generator:
  """The sampler of the run that `python -m gendistill.convert --export` wrote to `path`, with its network."""
  from gendistill import convert  # pylint: disable=g-import-not-at-top
  from gendistill.data.spec import abstract_batch  # pylint: disable=g-import-not-at-top
  if not paths.isfile(path):
    raise FileNotFoundError(f"--network={path!r}: no such file.")
  try:
    variables, _, metadata = convert.read_exported(path)
  except (convert.ConversionError, convert.WeightsFileError) as e:
    raise ValueError(f"--network={path!r}: {e}") from None
  if "gendistill_run" not in metadata:
    raise ValueError(f"--network={path!r} records no run (exported before runs were recorded): export it again "
                     "with `python -m gendistill.convert --export RUN FILE`, or use --workdir=RUN.")
  run = json.loads(metadata["gendistill_run"])
  config = ml_collections.ConfigDict(objectives.migrate_config(run["config"]))
  if guidance is not None:
    config.sampler.guidance = float(guidance)
  spec = DataSpec(**{**run["spec"], "shape": tuple(run["spec"]["shape"])})
  objective = objectives.build(config, spec)
  abstract = jax.eval_shape(objective.init, jax.eval_shape(jax.random.key, 0), abstract_batch(spec),
                            teachers.abstract_for_run(config, spec))
  if jax.tree.leaves(abstract.extra):
    raise ValueError(f"--network={path!r}: the {config.objective.name} sampler needs training state besides the "
                     f"network (state.extra: {sorted(abstract.extra)}); use --workdir=RUN.")
  role = objective.export_role
  expected = abstract.ema[role] if role in abstract.ema else abstract.params[role]
  if jax.tree.structure(expected) != jax.tree.structure(variables):
    raise ValueError(f"--network={path!r}: its network does not match the {role!r} network of its run's config.")
  variables = jax.tree.map(lambda v, a: np.asarray(v, a.dtype), variables, expected)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1))) if mesh is None else mesh
  # Only what samplers read: the exported network (as EMA and as parameters) and the step.
  state = abstract.replace(step=np.int32(run.get("step", 0)), rng=jax.random.key(0), params={role: variables},
                           ema={role: variables}, opt_state={}, extra={}, skipped={})
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return Generator(objective=objective, spec=spec, state=state, mesh=mesh, config=config, steps=steps)


def check_out(out: str, spec: DataSpec, as_grid: bool = False):
  """Raises ValueError unless `out` is something `write` can write for data of `spec`."""
  if out.endswith(".npz"):
    return
  if as_grid and not out.endswith(".png"):
    raise ValueError(f"--grid writes one PNG: --out must end in .png, got {out!r}.")
  if not as_grid and out.endswith(".png"):
    raise ValueError(f"--out={out!r} is one PNG: add --grid, or give a directory for one PNG per sample.")
  if not as_grid and spec.key != "image":
    raise ValueError(f"Samples of {spec.key!r} data are not images: use --out=FILE.npz, or --grid --out=FILE.png.")


def write(samples: np.ndarray, seeds: Sequence[int], labels: Optional[np.ndarray], out: str, spec: DataSpec,
          as_grid: bool = False, reference: Optional[np.ndarray] = None):
  """Writes samples as PNGs into a directory, one grid PNG, or an .npz (see the module docstring)."""
  check_out(out, spec, as_grid)
  seeds = np.asarray(seeds)
  if out.endswith(".npz"):
    arrays = {"seeds": seeds}
    if spec.key == "image":
      arrays["images"] = grid_lib.to_uint8(samples)
    else:
      arrays[spec.key] = samples.astype(np.float32)
    if labels is not None:
      arrays["labels"] = labels.astype(np.int64)
    paths.save_npz(out, **arrays)   # local or gs://...
    return
  if as_grid:
    if spec.key == "image":
      ncols = spec.num_classes if spec.num_classes and labels is not None and len(seeds) % spec.num_classes == 0 \
          and np.array_equal(labels, seeds % spec.num_classes) else None
      grid_lib.save_image_grid(samples, out, ncols=ncols)
    else:
      grid_lib.save_scatter(samples, out, reference=reference)
    return
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths.makedirs(out)
  for seed, image in zip(seeds, grid_lib.to_uint8(samples)):
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    paths.write_bytes(paths.join(out, f"{seed:06d}.png"), buf.getvalue())


def _reference(config, n: int = 4000):
  """Real 2-D points of a toy2d run's data, drawn under a scatter plot."""
  from gendistill import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.build(config.data).reference(n)["x"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()
  if (_NUM.value is None) == (_SEEDS.value is None):
    raise app.UsageError("Pass exactly one of --num=N (seeds 0..N-1) and --seeds=a-b.")
  seeds = list(range(_NUM.value)) if _NUM.value is not None else parse_seeds(_SEEDS.value)
  if not seeds:
    raise app.UsageError("No seeds to sample.")
  if (_WORKDIR.value is None) == (_NETWORK.value is None):
    raise app.UsageError("Pass exactly one of --workdir=RUN and --network=FILE (from gendistill.convert --export).")
  try:
    if _NETWORK.value is not None:
      if _CHECKPOINT.value is not None:
        raise ValueError("--checkpoint: an exported --network file holds one network; export another step instead.")
      generator = load_exported(_NETWORK.value, _STEPS.value, _GUIDANCE.value)
    else:
      generator = load(_WORKDIR.value, _CHECKPOINT.value, _STEPS.value, _GUIDANCE.value)
    labels = generator.labels_for(seeds, _CLASS.value)
    check_out(_OUT.value, generator.spec, _GRID.value)   # before sampling, not after
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  samples = generator(seeds, labels, _BATCH.value, progress=sys.stderr.isatty())
  reference = _reference(generator.config) if _GRID.value and generator.spec.key == "x" else None
  write(samples, seeds, labels, _OUT.value, generator.spec, as_grid=_GRID.value, reference=reference)
  print(f"Wrote {len(seeds)} samples of {_WORKDIR.value or _NETWORK.value} (step {int(generator.state.step)}) to "
        f"{_OUT.value}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["out"])
  app.run(main)
