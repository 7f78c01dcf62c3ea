"""Flax networks behind one contract (see denoiser.py).

`build_networks` is the one adapter from config sections to the `Network`s an objective receives (one per role);
`build_backbone` is the one place `network.kind` selects an architecture (where a converted teacher's
architecture plugs in too).

Compute switches of the `network` section, applied to every network built here:
  dtype  'float32' | 'bfloat16': the activations' dtype; parameters (and the mapping/embedding layers, norms'
         statistics and the output) stay float32.
  remat  'none' | 'full' | 'dots': rematerialise each network call in the backward pass (jax.checkpoint on the
         backbone). 'full' keeps only the call's inputs (objectives that chain several networks in one loss hold
         one network's activations at a time); 'dots' keeps convolution and matmul outputs and recomputes the
         elementwise work (norms, activations). Results are unchanged; parameter paths are unchanged.
"""
from typing import Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gendistill.nets import adm
from gendistill.nets import edm2
from gendistill.nets import discriminator
from gendistill.nets import mlp
from gendistill.nets import unet
from gendistill.nets import weighting
from gendistill.nets.denoiser import Denoiser, Network, one_hot_labels


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable, "dots": jax.checkpoint_policies.dots_saveable}


def compute_dtype(cfg: ml_collections.ConfigDict):
  name = cfg.dtype
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
  remat = cfg.remat
  if cfg.kind == "unet":
    height, width, channels = spec.shape
    if height != width:
      raise ValueError(f"The UNet needs square images; got {spec.shape}.")
    cls = unet.UNet if remat == "none" else rematerialised(unet.UNet, remat)
    return cls(
        img_resolution=height, in_channels=channels, out_channels=channels, label_dim=spec.num_classes,
        model_channels=cfg.model_channels, channel_mult=tuple(cfg.channel_mult), num_blocks=cfg.num_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions), dropout=cfg.dropout, label_dropout=cfg.label_dropout,
        embedding_type=cfg.embedding_type, dtype=dtype, **unet.edm_fields(cfg))
  if cfg.kind == "adm":
    cls = adm.DhariwalUNet if remat == "none" else rematerialised(adm.DhariwalUNet, remat)
    return cls(**adm.fields(cfg, spec), dtype=dtype)
  if cfg.kind == "mlp":
    if len(spec.shape) != 1:
      raise ValueError(f"The MLP takes vectors; got per-sample shape {spec.shape}.")
    cls = mlp.MLP if remat == "none" else rematerialised(mlp.MLP, remat)
    return cls(data_dim=spec.shape[0], label_dim=spec.num_classes, hidden=cfg.mlp_hidden, depth=cfg.mlp_depth,
               dropout=cfg.dropout, label_dropout=cfg.label_dropout, dtype=dtype)
  if cfg.kind == "edm2":
    cls = edm2.EDM2 if remat == "none" else rematerialised(edm2.EDM2, remat)
    return cls(**edm2.fields_from_config(cfg, spec), dtype=dtype)
  raise ValueError(f"Unknown network.kind {cfg.kind!r}; expected 'unet', 'adm', 'edm2' or 'mlp'.")


def build_denoiser(cfg: ml_collections.ConfigDict, spec) -> Denoiser:
  return Denoiser(backbone=build_backbone(cfg, spec), preconditioning=cfg.preconditioning,
                  sigma_data=cfg.sigma_data)


# Kinds of role networks an objective may ask for (see build_networks).
DENOISER = "denoiser"
CRITIC = "critic"
FEATURE_HEAD = "feature_head"
TIME_WEIGHTING = "time_weighting"
KINDS = (DENOISER, CRITIC, FEATURE_HEAD, TIME_WEIGHTING)


def build_networks(network_cfg: ml_collections.ConfigDict, spec, roles: Mapping[str, str],
                   critic_cfg: Optional[ml_collections.ConfigDict] = None,
                   weighting_features: int = 128) -> Dict[str, Network]:
  """The role networks of a run: `roles` maps each role to a kind.

    'denoiser'      the preconditioned Denoiser of the `network` section (for distillation the teacher's
                    architecture, so the students can start from its parameters); all such roles share it
    'critic'        a critic of the objective's `critic` section (`discriminator.build_critic`)
    'feature_head'  DMD2's classifier head on the denoiser's bottleneck features: a conv head for images, an
                    MLP of the `critic` section's width and depth for vectors
    'time_weighting' a scalar function of the time input with `weighting_features` Fourier features
                    (`weighting.AdaptiveWeight`; sCM's learned loss weighting)
  """
  out, denoiser = {}, None
  for role, kind in roles.items():
    if kind == DENOISER:
      if denoiser is None:
        denoiser = Network.from_module(build_denoiser(network_cfg, spec))
      out[role] = denoiser
    elif kind in (CRITIC, FEATURE_HEAD):
      if critic_cfg is None:
        raise ValueError(f"The {role!r} network ({kind}) needs the objective's `critic` config section.")
      if kind == CRITIC:
        module = discriminator.build_critic(critic_cfg, spec)
      elif len(spec.shape) == 3:
        module = discriminator.BottleneckHead()
      else:
        module = discriminator.MLPCritic(hidden=critic_cfg.hidden, depth=critic_cfg.depth)
      out[role] = Network(init=module.init, apply=module.apply)
    elif kind == TIME_WEIGHTING:
      module = weighting.AdaptiveWeight(int(weighting_features))
      out[role] = Network(init=module.init, apply=module.apply)
    else:
      raise ValueError(f"Unknown network kind {kind!r} for role {role!r}; expected one of {KINDS}.")
  return out


__all__ = ["Denoiser", "Network", "build_backbone", "build_denoiser", "build_networks", "compute_dtype",
           "one_hot_labels", "rematerialised", "DENOISER", "CRITIC", "FEATURE_HEAD",
           "TIME_WEIGHTING"]
