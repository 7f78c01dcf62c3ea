"""Every config key with its default. Presets call `get_config(objective)` and override; the result is locked,
so a misspelt key or a value of the wrong type is an error that names it. A run's config holds the shared
sections and the chosen objective's section only (`objective.name` and `objective.<name>`): a key of another
objective (e.g. `--config.objective.sid.alpha=2` on a dmd2 run) is an error."""
import json

import ml_collections

from gendistill import data as data_lib
from gendistill.evaluation import evaluator as evaluator_lib
from gendistill import objectives
from gendistill import sharding
from gendistill import teachers
from gendistill.diffusion import samplers
from gendistill.nets import edm2
from gendistill.nets import unet


def get_config(objective: str = "edm") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Keys and library defaults in gendistill/data (toy2d_kind: ring8 | grid25 | ring8_unequal | grid25_unequal |
  # swiss_roll | moons | family:SEED | mixture (data.toy2d_mixture JSON or an .npz at data.path) | points (an
  # .npy/.npz at data.path); batch_size is the global batch; conditional keeps labels). This base preset: digits.
  c.data = data_lib.data_config()
  c.data.update(name="digits", image_size=16, tfds_name="cifar10", batch_size=128, conditional=True)

  c.network = ml_collections.ConfigDict(dict(
      kind="unet",            # unet | adm | edm2 | mlp
      preconditioning="edm",  # edm | vp | ve
      sigma_data=0.5,
      # UNet (DDPM++ / SongUNet structure); see gendistill/nets/unet.py PRESETS
      model_channels=32,
      channel_mult=(1, 2, 2),
      num_blocks=2,
      attn_resolutions=(8,),
      embedding_type="positional",
      **unet.EDM_FIELDS,      # SongUNet's optional fields (NCSN++, augmentation labels) for converted teachers
      **edm2.CONFIG_FIELDS,   # EDM2's magnitude-preserving UNet (kind 'edm2'); see gendistill/nets/edm2.py
      dropout=0.1,
      label_dropout=0.0,      # > 0 trains the unconditional model too, for classifier-free guidance
      # MLP (toy vectors)
      mlp_hidden=256,
      mlp_depth=4,
      # Compute (all networks built from this section; parameters stay float32)
      dtype="float32",        # activations/compute dtype: float32 | bfloat16
      remat="none",           # rematerialise each network call in the backward pass: none | full | dots
  ))

  c.objective = ml_collections.ConfigDict({"name": objective, objective: objectives.default_config(objective)})

  c.teacher = teachers.teacher_config()

  # Heun/Euler sampling with a diffusion model (EDM Algorithm 2); also the teacher sampler of distillation.
  c.sampler = samplers.sampler_config()

  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000,
      log_every=50,
      checkpoint_every=500,
      keep_checkpoints=3,
      sample_every=500,       # sample grid PNG; 0 disables
      eval_every=0,           # evaluation hook; 0 = only at the end
      num_grid_samples=64,
      max_nonfinite_logs=3,   # stop after this many consecutive non-finite logged losses
      max_skipped_fraction=0.05,  # stop when a role's non-finite gradient steps exceed this fraction of the steps
      max_param_norm=1e6,     # health check: a larger parameter norm is a blow-up, never a good checkpoint (0: off)
      microbatches=1,         # gradient accumulation: each global batch in this many micro-batches (lax.scan)
  ))

  # Device mesh (axes data x fsdp; -1 = the rest) and sharding rules: see gendistill/sharding.py.
  c.mesh = sharding.mesh_config()

  c.eval = ml_collections.ConfigDict(dict(
      num_samples=1000,
      batch_size=250,
      steps=0,                # sampler steps for evaluation; 0 = the objective's default
      # FID/KID/IS/precision-recall during training and in gendistill.evaluate: a local Inception file
      # (pytorch-fid .pth or gendistill .npz; never downloaded) and a reference: EDM-style mu/sigma .npz
      # and/or this many real images of the dataset.
      inception_weights="",
      ref_stats="",
      ref_images=0,
      inception_batch_size=100,
      inception_preprocessing=evaluator_lib.DEFAULT_PREPROCESSING,   # nvidia (EDM's reference statistics) | pytorch_fid
  ))
  c.lock()
  return c


def unet_preset(name: str) -> dict:
  """The network-config fields of a UNet preset (the values live in gendistill/nets/unet.py PRESETS)."""
  keys = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout")
  return dict(kind="unet", **{k: unet.PRESETS[name][k] for k in keys})


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to seconds on a CPU (tests and quick checks)."""
  c.data.batch_size = 8
  c.data.toy2d_size = 1024
  # One resolution and no attention: compiling a UNet step dominates a smoke run on CPU, and this halves it
  # (tests/test_nets.py covers the down/up-sampling and attention blocks).
  c.network.update(model_channels=16, channel_mult=(1,), num_blocks=1, attn_resolutions=(),
                   mlp_hidden=32, mlp_depth=2)
  # The final grid and the evaluation draw one batch of the same size and steps: one compiled sampler, not two.
  c.train.update(num_steps=2, log_every=1, checkpoint_every=1, sample_every=0, eval_every=0,
                 num_grid_samples=16)
  c.eval.update(num_samples=16, batch_size=16, steps=0)
  c.sampler.num_steps = 2
  return c


# Every flag a preset accepts after its dataset (a preset taking a new flag adds it here): a misspelt one is an
# error, not a silently different run.
KNOWN_FLAGS = ("smoke", "grid25", "vsd", "noreg", "fewstep", "reverse_kl", "softened_rkl", "js", "squared_hellinger",
               "forward_kl", "jeffreys", "neyman_chi2", "l2", "uncond")
KNOWN_FLAG_PREFIXES = ("teacher=", "init=")


def parse_arg(arg: str, takes_teacher: bool = False):
  """'digits,smoke' -> ('digits', {'smoke'}). `teacher=` and `init=` flags are errors unless the preset reads
  them (`takes_teacher`), so that they are never silently ignored."""
  parts = [p for p in (arg or "").split(",") if p]
  unknown = [p for p in parts[1:] if p not in KNOWN_FLAGS and not p.startswith(KNOWN_FLAG_PREFIXES)]
  if unknown:
    raise ValueError(f"Unknown preset flag(s) {unknown} in {arg!r}; known flags: {', '.join(KNOWN_FLAGS)} and "
                     f"{', '.join(p + '...' for p in KNOWN_FLAG_PREFIXES)}.")
  for prefix in KNOWN_FLAG_PREFIXES:
    if not takes_teacher and any(p.startswith(prefix) for p in parts[1:]):
      raise ValueError(f"This preset trains without a teacher, so the flag '{prefix}...' in {arg!r} has no meaning; "
                       "remove it.")
  return (parts[0] if parts else ""), set(parts[1:])


def _parse_value(key: str, value: str, old):
  """`value` for a key whose current value is `old`: a bare string for string keys, true/false (any case) for
  booleans, else JSON converted to the old value's type. Anything else is one ValueError naming the key."""
  if isinstance(old, str):
    return value
  try:
    if isinstance(old, bool):
      return {"true": True, "false": False}[value.lower()]
    parsed = json.loads(value)
    return parsed if old is None else type(old)(parsed)
  except (KeyError, ValueError, TypeError):
    expected = "true or false" if isinstance(old, bool) else "as JSON"
    raise ValueError(f"Cannot set {key}={value!r}: the key holds {type(old).__name__} {old!r}; give a value of "
                     f"that type ({expected}).") from None


def override(c: ml_collections.ConfigDict, items) -> ml_collections.ConfigDict:
  """Applies 'dotted.key=value' strings, e.g. from a benchmark's --set flags (see _parse_value for the value);
  an unknown key is a KeyError naming it."""
  for item in items:
    key, value = item.split("=", 1)
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = _parse_value(key, value, node[leaf])
  return c
