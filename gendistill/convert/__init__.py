"""Published diffusion networks -> teachers of this library, and distilled generators -> PyTorch files.

  python -m gendistill.convert SRC OUT [--preset NAME] [--key ema]
  python -m gendistill.convert --export RUN_WORKDIR OUT.pt|OUT.safetensors   (a run's exported network)

SRC: an EDM or EDM2 .pkl (architecture and preconditioning read from the constructor arguments the pickle
records; no code in it is run, see safe_load.py), or a state dict (.pt/.pth, .safetensors, .npz; EDM or EDM2
key names) with `--preset` naming the architecture (convert/presets.py: the EDM files, `edm2-img64-xs..xl`,
tiny ones for tests). Every key and shape is checked (mapping.py for EDM's SongUNet/DhariwalUNet, nets/edm2.py
for EDM2); on any error nothing is written.

EDM2 files (`training.networks_edm2.Precond`, recorded in the pickle as class 'Precond' with a 'unet'
submodule): the published pickles store the 'ema' network in float16; it is converted to float32 (the
float16 values exactly). The converted network is kind 'edm2' with EDM's preconditioning (EDM2's Precond), its
uncertainty head included (nets/edm2.py `logvar_fn`).

OUT, a converted teacher (a directory):
  config.json  {"format": "gendistill-teacher", "version": 1, "network": <network config section>,
                "spec": {"key": "image", "shape": [H, W, C], "num_classes": n}, "source": {...}}
  params.npz   the Flax variables of nets.build_denoiser(network, spec), one array per leaf, keyed by the
               '/'-joined path (e.g. 'params/backbone/enc/32x32_conv/kernel'); read with allow_pickle=False.
A run uses it with `teacher.source='converted'` and `teacher.workdir=OUT` (`load_teacher(OUT)`); its
`network` section must equal config.json's for students to start from the teacher.
"""
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import numpy as np

from gendistill.convert import export as export_lib
from gendistill.convert import mapping
from gendistill.convert import presets
from gendistill.convert.mapping import ConversionError
from gendistill.convert.safe_load import (Checkpoint, PersistentObject, UnsafePickleError, WeightsFileError,
                                          load_weights)

FORMAT = "gendistill-teacher"
PRECONDITIONINGS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}
EDM2_CLASS = "Precond"  # the class name EDM2's pickles record for training.networks_edm2.Precond
# Defaults of EDM's network constructors (training/networks.py), for keyword arguments a pickle leaves out.
_SONGUNET_DEFAULTS = dict(augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4,
                          num_blocks=4, attn_resolutions=[16], dropout=0.10, label_dropout=0,
                          embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                          decoder_type="standard", resample_filter=[1, 1])
_DHARIWAL_DEFAULTS = dict(augment_dim=0, model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4,
                          num_blocks=3, attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0)
# Preconditioning constants this library implements (diffusion/precond.py); other values are refused.
_FIXED = {"VPPrecond": dict(beta_d=19.9, beta_min=0.1, M=1000)}
_PRECOND_KEYS = {"img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                 "sigma_data", "model_type", "beta_d", "beta_min", "M", "epsilon_t"}

__all__ = ["ConversionError", "UnsafePickleError", "WeightsFileError", "convert", "export_generator",
           "infer_architecture", "load_teacher", "load_weights", "read_teacher"]


def infer_architecture(net: PersistentObject) -> Dict[str, Any]:
  """dict(network=..., shape=..., num_classes=...) from an EDM network pickle's recorded constructor arguments."""
  cls = net.class_name
  if cls == EDM2_CLASS:
    return _edm2_architecture(net)
  if cls == "iDDPMPrecond":
    raise ConversionError("iDDPMPrecond (EDM's baseline ADM files) is not supported: its c_noise is an index "
                          "into 1000 discrete noise levels. Use edm-imagenet-64x64-cond-adm.pkl (EDMPrecond).")
  if cls not in PRECONDITIONINGS:
    raise ConversionError(f"The pickle's network is a {cls!r}; expected one of {sorted(PRECONDITIONINGS)} "
                          f"(an EDM network file) or {EDM2_CLASS!r} (an EDM2 network file).")
  kw = dict(net.init_kwargs)
  if not kw and net.init_args:
    raise ConversionError(f"{cls} recorded positional constructor arguments only; use --preset.")
  for name, value in _FIXED.get(cls, {}).items():
    if name in kw and not np.isclose(kw[name], value):
      raise ConversionError(f"{cls} with {name}={kw[name]} is not supported (this library's VP uses {value}).")
  model_type = kw.get("model_type", "DhariwalUNet" if cls == "EDMPrecond" else "SongUNet")
  inner = net.modules.get("model")
  if inner is not None and inner.class_name != model_type:
    raise ConversionError(f"The pickle's model is a {inner.class_name}, but {cls} records model_type="
                          f"{model_type!r}.")
  model_kw = {k: v for k, v in kw.items() if k not in _PRECOND_KEYS}
  if model_type == "SongUNet":
    defaults, kind = _SONGUNET_DEFAULTS, "unet"
  elif model_type == "DhariwalUNet":
    defaults, kind = _DHARIWAL_DEFAULTS, "adm"
  else:
    raise ConversionError(f"model_type {model_type!r} is not supported; expected SongUNet or DhariwalUNet.")
  unknown = sorted(set(model_kw) - set(defaults))
  if unknown:
    raise ConversionError(f"{model_type} constructor arguments {unknown} are not supported.")
  arch = dict(defaults, **model_kw)
  if kind == "unet" and (arch.pop("decoder_type") != "standard" or arch["encoder_type"] == "skip"):
    raise ConversionError("SongUNet with encoder_type 'skip' or decoder_type 'skip' is not supported (no "
                          "published EDM file uses them).")
  network = dict(kind=kind, preconditioning=PRECONDITIONINGS[cls], sigma_data=float(kw.get("sigma_data", 0.5)),
                 **{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})
  res, channels = int(kw["img_resolution"]), int(kw["img_channels"])
  return dict(network=network, shape=(res, res, channels), num_classes=int(kw.get("label_dim", 0)))


def _edm2_architecture(net: PersistentObject) -> Dict[str, Any]:
  """The architecture of an EDM2 pickle's Precond (nets/edm2.py architecture_from_official)."""
  from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top
  inner = net.modules.get("unet")
  if inner is None or inner.class_name != "UNet":
    raise ConversionError(f"The pickle's network is a {EDM2_CLASS!r} without EDM2's 'unet' submodule (found "
                          f"{sorted(net.modules)}); not an EDM2 network file.")
  if not net.init_kwargs:
    raise ConversionError("The EDM2 Precond recorded no constructor arguments; save its state_dict and use "
                          "--preset (e.g. edm2-img64-s).")
  try:
    return edm2.architecture_from_official({**dict(zip(("img_resolution", "img_channels", "label_dim"),
                                                        net.init_args)), **net.init_kwargs})
  except ValueError as e:
    raise ConversionError(str(e)) from e


def _map_weights(state_dict, arch, abstract, source):
  """Flax variables of the architecture `arch` from a PyTorch state dict; both mappings cast every value to
  float32 (float16/bfloat16 files: their values exactly)."""
  network = arch["network"]
  if network["kind"] == "edm2":
    from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top
    fields = edm2.fields_from_config(_network_config(network), _spec(arch))
    try:
      return edm2.from_torch_state_dict(state_dict, fields)
    except ValueError as e:
      raise ConversionError(f"{source}: {e}") from e
  return mapping.torch_to_flax(state_dict, abstract, resample_filter=tuple(network.get("resample_filter", (1, 1))),
                               source=source)


def _network_config(network: Dict[str, Any]):
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = dict(dtype="float32", remat="none", label_dropout=0.0, embedding_type="positional")
  cfg.update(network)
  return ml_collections.ConfigDict(cfg)


def _spec(arch):
  from gendistill.data.spec import DataSpec  # pylint: disable=g-import-not-at-top
  return DataSpec(key="image", shape=tuple(arch["shape"]), num_classes=int(arch["num_classes"]))


def _abstract_variables(network_cfg, spec):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gendistill import nets  # pylint: disable=g-import-not-at-top
  net = nets.build_denoiser(network_cfg, spec)
  x = jnp.zeros((1,) + tuple(spec.shape), jnp.float32)
  labels = jnp.zeros((1, spec.num_classes), jnp.float32) if spec.num_classes else None
  return net, jax.eval_shape(lambda: net.init(jax.random.key(0), x, jnp.ones((1,)), labels))


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def _unflatten(flat):
  tree = {}
  for key, value in flat.items():
    node = tree
    *path, leaf = key.split("/")
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _check_preset(arch, preset_name, checkpoint_arch):
  """A preset given with a pickle must agree with what the pickle records."""
  if checkpoint_arch is None:
    return
  for key in ("shape", "num_classes"):
    if tuple(np.atleast_1d(arch[key])) != tuple(np.atleast_1d(checkpoint_arch[key])):
      raise ConversionError(f"--preset {preset_name}: {key} {arch[key]} differs from the file's "
                            f"{checkpoint_arch[key]}.")
  for key, value in checkpoint_arch["network"].items():
    if key in ("dropout", "label_dropout"):
      continue
    if arch["network"].get(key) != value:
      raise ConversionError(f"--preset {preset_name}: network.{key} = {arch['network'].get(key)!r} but the file "
                            f"records {value!r}: the preset describes another architecture.")


def convert(src: str, out: str, preset: Optional[str] = None, key: Optional[str] = None,
            overwrite: bool = False) -> Dict[str, Any]:
  """Converts the weights file `src` to a teacher directory `out` (see the module docstring); returns config.json.

  Raises (writing nothing): WeightsFileError / UnsafePickleError for unreadable or disallowed files,
  ConversionError for an unknown architecture or missing, unexpected or mis-shaped keys.
  """
  teacher_presets = presets
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists; choose a new output directory (or overwrite=True / --overwrite).")
  ckpt = load_weights(src, key=key)
  file_arch = infer_architecture(ckpt.network) if ckpt.network is not None else None
  if preset:
    arch = teacher_presets.get(preset)
    _check_preset(arch, preset, file_arch)
  elif file_arch is not None:
    arch = file_arch
  else:
    arch = _arch_from_metadata(ckpt)
    if arch is None:
      raise ConversionError(f"{src} is a state dict without constructor arguments: name its architecture with "
                            f"--preset (one of {teacher_presets.names()}).")
  network_cfg, spec = _network_config(arch["network"]), _spec(arch)
  _, abstract = _abstract_variables(network_cfg, spec)
  variables = _map_weights(ckpt.state_dict, arch, abstract, src)
  info = dict(format=FORMAT, version=1, network=network_cfg.to_dict(),
              spec=dict(key="image", shape=list(spec.shape), num_classes=spec.num_classes),
              source=dict(file=os.path.basename(src), format=ckpt.format, preset=preset or "",
                          class_name=ckpt.network.class_name if ckpt.network is not None else "",
                          bytes=os.path.getsize(src)))
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
  try:
    np.savez(os.path.join(tmp, "params.npz"), **_flatten(variables))
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(info, f, indent=2, default=list)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return info


def _arch_from_metadata(ckpt: Checkpoint):
  """Exported files (export_generator) carry their architecture as safetensors metadata."""
  text = ckpt.metadata.get("gendistill_architecture")
  return json.loads(text) if text else None


def read_teacher(directory: str):
  """(network ConfigDict, DataSpec, variables as numpy) of a converted teacher directory."""
  from gendistill import paths  # pylint: disable=g-import-not-at-top
  path = paths.join(directory, "config.json")
  if not paths.isfile(path):
    raise FileNotFoundError(f"No converted teacher in {directory!r} (missing config.json; make one with "
                            "`python -m gendistill.convert SRC OUT`).")
  info = json.loads(paths.read_text(path))
  if info.get("format") != FORMAT:
    raise ValueError(f"{path} is not a converted teacher (format {info.get('format')!r}, expected {FORMAT!r}).")
  network_cfg = _network_config(info["network"])
  spec = _spec(dict(shape=info["spec"]["shape"], num_classes=info["spec"]["num_classes"]))
  variables = _unflatten(paths.load_npz(paths.join(directory, "params.npz")))
  return network_cfg, spec, variables


def load_teacher(directory: str):
  """The converted teacher in `directory` as a teachers.Teacher (for teacher.source='converted')."""
  import jax  # pylint: disable=g-import-not-at-top
  from gendistill import nets  # pylint: disable=g-import-not-at-top
  from gendistill.teachers import Teacher  # pylint: disable=g-import-not-at-top
  network_cfg, spec, variables = read_teacher(directory)
  net = nets.build_denoiser(network_cfg, spec)
  _, abstract = _abstract_variables(network_cfg, spec)
  if jax.tree.structure(abstract) != jax.tree.structure(variables) or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(variables))):
    raise ConversionError(f"{directory}: params.npz does not match the network in its config.json.")

  def apply_fn(params, x, sigma, labels=None, train=False, rngs=None):
    return net.apply(params, x, sigma, labels, train=train, rngs=rngs)
  return Teacher(params=jax.tree.map(jax.numpy.asarray, variables), apply_fn=apply_fn,
                 num_classes=spec.num_classes)


def export_generator(variables, network: Dict[str, Any], spec, path: str, run: Optional[Dict[str, Any]] = None
                     ) -> Dict[str, np.ndarray]:
  """Writes Flax `variables` of a network built from `network` (a network config section) for `spec` as a
  PyTorch state dict in EDM's names and layouts: `path` .pt (torch.load(weights_only=True)) or .safetensors
  (with the architecture as metadata, so `convert` reads it back without --preset). The keys are those of
  EDM's preconditioning wrapper (`model.` prefix), or of EDM2's Precond for kind 'edm2', so they load into the
  matching NVlabs/edm or NVlabs/edm2 network. `run` ({'config', 'spec', 'step'} of the run that trained it) is
  stored beside the architecture, so that `python -m gendistill.generate --network=path` samples as that run's
  objective did."""
  network = dict(network.to_dict() if hasattr(network, "to_dict") else network)
  arch = dict(network=network, shape=list(spec.shape), num_classes=spec.num_classes)
  if network["kind"] == "edm2":  # EDM2 Precond.state_dict() names (no 'model.' prefix)
    from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top
    state = edm2.to_torch_state_dict(jax_to_numpy(variables))
  else:
    state = mapping.flax_to_torch(jax_to_numpy(variables),
                                  resample_filter=tuple(network.get("resample_filter", (1, 1))))
  metadata = {"gendistill_architecture": json.dumps(arch, default=list)}
  if run is not None:
    metadata["gendistill_run"] = json.dumps(run, default=list)
  export_lib.save_state_dict(state, path, metadata=metadata)
  return state


def read_exported(path: str):
  """(Flax variables, architecture dict, metadata) of a file written by export_generator (.pt or .safetensors);
  the inverse of export_generator."""
  metadata = export_lib.read_metadata(path)
  if "gendistill_architecture" not in metadata:
    raise ConversionError(f"{path} was not written by `python -m gendistill.convert --export` (it records no "
                          "architecture).")
  arch = json.loads(metadata["gendistill_architecture"])
  network_cfg, spec = _network_config(arch["network"]), _spec(arch)
  _, abstract = _abstract_variables(network_cfg, spec)
  return _map_weights(load_weights(path).state_dict, arch, abstract, path), arch, metadata


def export_run(workdir: str, path: str, step: Optional[int] = None) -> Dict[str, np.ndarray]:
  """The network a finished run exports (the generator's EMA for distillation runs) as `path` (.pt/.safetensors).

  A one-step generator is this network called at its fixed noise level (e.g. SiD's sigma_init); the run's
  config.json says which."""
  from gendistill import checkpoint, teachers  # pylint: disable=g-import-not-at-top
  from gendistill.data.spec import DataSpec  # pylint: disable=g-import-not-at-top
  info = checkpoint.read_run_info(workdir)
  if info is None:
    raise FileNotFoundError(f"No run of gendistill in {workdir!r} (missing config.json).")
  network = info["config"]["network"]
  if network["kind"] not in ("unet", "adm", "edm2"):
    raise ConversionError(f"Only EDM/EDM2 networks (kind 'unet', 'adm' or 'edm2') export to PyTorch; the run's is "
                          f"{network['kind']!r}.")
  if step in (None, -1):
    ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), async_save=False)
    step = ckpt.latest_step()
    ckpt.close()
  teacher = teachers.from_workdir(workdir, step)
  run = dict(config=info["config"], spec=info["spec"], step=int(step) if step is not None else 0)
  return export_generator(teacher.params, network, DataSpec(**info["spec"]), path, run=run)


def jax_to_numpy(tree):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: jax_to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
