"""Flax networks behind one contract (see denoiser.py). `build_denoiser` turns a config section into a module.

Compute switches of the `network` section, applied to every network built here:
  dtype  'float32' | 'bfloat16': the activations' dtype; parameters (and the mapping/embedding layers, norms'
         statistics and the output) stay float32.
  remat  'none' | 'full' | 'dots': rematerialise each network call in the backward pass (jax.checkpoint on the
         backbone). 'full' keeps only the call's inputs (objectives that chain several networks in one loss hold
         one network's activations at a time); 'dots' keeps convolution and matmul outputs and recomputes the
         elementwise work (norms, activations). Results are unchanged; parameter paths are unchanged.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gendistill.nets.denoiser import Denoiser, one_hot_labels


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable, "dots": jax.checkpoint_policies.dots_saveable}


def compute_dtype(cfg: ml_collections.ConfigDict):
  name = cfg.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"network.dtype must be one of {sorted(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def rematerialised(backbone_cls, policy_name: str):
  """`backbone_cls` with its __call__ under jax.checkpoint (policy 'full' or 'dots'); same fields, same params.

  The backbone contract's keyword arguments are made positional so that the flags (train, return_features) can
  be static arguments of the checkpoint.
  """
  if policy_name not in REMAT_POLICIES:
    raise ValueError(f"network.remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {policy_name!r}.")
  # Argument 0 is the module; 1 x, 2 noise_labels, 3 class_labels, 4 train, 5 augment_labels, 6 return_features.
  lifted = nn.remat(backbone_cls, policy=REMAT_POLICIES[policy_name], static_argnums=(4, 6))

  class Remat(lifted):  # pylint: disable=missing-class-docstring
    def __call__(self, x, noise_labels, class_labels=None, train: bool = False, augment_labels=None,
                 return_features: bool = False):
      return super().__call__(x, noise_labels, class_labels, train, augment_labels, return_features)

  Remat.__name__ = Remat.__qualname__ = f"Remat{backbone_cls.__name__}"
  return Remat


def build_backbone(cfg: ml_collections.ConfigDict, spec):
  """Raw backbone F for data of `spec` (gendistill.data.DataSpec) from the `network` config section."""
  dtype = compute_dtype(cfg)
  remat = cfg.get("remat", "none")
  if cfg.kind == "unet":
    from gendistill.nets import unet  # pylint: disable=g-import-not-at-top
    height, width, channels = spec.shape
    if height != width:
      raise ValueError(f"The UNet needs square images; got {spec.shape}.")
    cls = unet.UNet if remat == "none" else rematerialised(unet.UNet, remat)
    return cls(
        img_resolution=height, in_channels=channels, out_channels=channels, label_dim=spec.num_classes,
        model_channels=cfg.model_channels, channel_mult=tuple(cfg.channel_mult), num_blocks=cfg.num_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions), dropout=cfg.dropout, label_dropout=cfg.label_dropout,
        embedding_type=cfg.embedding_type, dtype=dtype)
  if cfg.kind == "mlp":
    from gendistill.nets import mlp  # pylint: disable=g-import-not-at-top
    if len(spec.shape) != 1:
      raise ValueError(f"The MLP takes vectors; got per-sample shape {spec.shape}.")
    cls = mlp.MLP if remat == "none" else rematerialised(mlp.MLP, remat)
    return cls(data_dim=spec.shape[0], label_dim=spec.num_classes, hidden=cfg.mlp_hidden, depth=cfg.mlp_depth,
               dropout=cfg.dropout, label_dropout=cfg.label_dropout, dtype=dtype)
  if cfg.kind == "edm2":
    from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top
    cls = edm2.EDM2 if remat == "none" else rematerialised(edm2.EDM2, remat)
    return cls(**edm2.fields_from_config(cfg, spec), dtype=dtype)
  raise ValueError(f"Unknown network.kind {cfg.kind!r}; expected 'unet', 'mlp' or 'edm2'.")


def build_denoiser(cfg: ml_collections.ConfigDict, spec) -> Denoiser:
  return Denoiser(backbone=build_backbone(cfg, spec), preconditioning=cfg.preconditioning,
                  sigma_data=cfg.sigma_data)


__all__ = ["Denoiser", "build_backbone", "build_denoiser", "compute_dtype", "one_hot_labels", "rematerialised"]
