"""Every config key with its default. Presets call `get_config()` and override; the result is locked, so a
misspelt key or a value of the wrong type is an error that names it."""
import json

import ml_collections

from gendistill import objectives
from gendistill import sharding
from gendistill import teachers


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      name="digits",          # toy2d | digits | tfds
      toy2d_kind="ring8",     # ring8 | grid25 | ring8_unequal | grid25_unequal | swiss_roll | moons
      toy2d_size=65536,       # size of the fixed toy training pool
      image_size=16,          # digits are resized to this; tfds images too when > 0
      tfds_name="cifar10",
      tfds_split="train",
      tfds_data_dir="",
      batch_size=128,         # global batch, over all processes
      seed=0,                 # shuffle seed
      conditional=True,       # keep labels (class-conditional model)
  ))

  c.network = ml_collections.ConfigDict(dict(
      kind="unet",            # unet | mlp
      preconditioning="edm",  # edm | vp | ve
      sigma_data=0.5,
      # UNet (DDPM++ / SongUNet structure); see gendistill/nets/unet.py PRESETS
      model_channels=32,
      channel_mult=(1, 2, 2),
      num_blocks=2,
      attn_resolutions=(8,),
      embedding_type="positional",
      dropout=0.1,
      label_dropout=0.0,      # > 0 trains the unconditional model too, for classifier-free guidance
      # MLP (toy vectors)
      mlp_hidden=256,
      mlp_depth=4,
      # Compute (all networks built from this section; parameters stay float32)
      dtype="float32",        # activations/compute dtype: float32 | bfloat16
      remat="none",           # rematerialise each network call in the backward pass: none | full | dots
  ))

  c.objective = ml_collections.ConfigDict()
  c.objective.name = "edm"
  for name, section in objectives.default_configs().items():
    c.objective[name] = section

  c.teacher = teachers.teacher_config()

  # Heun/Euler sampling with a diffusion model (EDM Algorithm 2); also the teacher sampler of distillation.
  c.sampler = ml_collections.ConfigDict(dict(
      num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
      s_churn=0.0, s_min=0.0, s_max=float("inf"), s_noise=1.0, guidance=1.0))

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
  ))
  c.lock()
  return c


def unet_preset(name: str) -> dict:
  """The network-config fields of a UNet preset (the values live in gendistill/nets/unet.py PRESETS)."""
  from gendistill.nets import unet  # pylint: disable=g-import-not-at-top
  keys = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout")
  return dict(kind="unet", **{k: unet.PRESETS[name][k] for k in keys})


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to seconds on a CPU (tests and quick checks)."""
  c.data.batch_size = 8
  c.data.toy2d_size = 1024
  c.network.update(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,),
                   mlp_hidden=32, mlp_depth=2)
  c.train.update(num_steps=2, log_every=1, checkpoint_every=1, sample_every=0, eval_every=0,
                 num_grid_samples=4)
  c.eval.update(num_samples=16, batch_size=16, steps=2)
  c.sampler.num_steps = 2
  return c


# Every flag a preset accepts after its dataset (a preset taking a new flag adds it here): a misspelt one is an
# error, not a silently different run.
KNOWN_FLAGS = ("smoke", "grid25", "vsd", "noreg", "fewstep", "reverse_kl", "softened_rkl", "js", "squared_hellinger",
               "forward_kl", "jeffreys", "neyman_chi2")
KNOWN_FLAG_PREFIXES = ("teacher=",)


def parse_arg(arg: str):
  """'digits,smoke' -> ('digits', {'smoke'})."""
  parts = [p for p in (arg or "").split(",") if p]
  unknown = [p for p in parts[1:] if p not in KNOWN_FLAGS and not p.startswith(KNOWN_FLAG_PREFIXES)]
  if unknown:
    raise ValueError(f"Unknown preset flag(s) {unknown} in {arg!r}; known flags: {', '.join(KNOWN_FLAGS)} and "
                     f"{', '.join(p + '...' for p in KNOWN_FLAG_PREFIXES)}.")
  return (parts[0] if parts else ""), set(parts[1:])


def override(c: ml_collections.ConfigDict, items) -> ml_collections.ConfigDict:
  """Applies 'dotted.key=value' strings (value as JSON, or a bare string for string keys), e.g. from a
  benchmark's --set flags; an unknown key is a KeyError naming it."""
  for item in items:
    key, value = item.split("=", 1)
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    old = node[leaf]
    node[leaf] = value if isinstance(old, str) else type(old)(json.loads(value))
  return c
