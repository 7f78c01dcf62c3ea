"""Flax networks behind one contract (see denoiser.py). `build_denoiser` turns a config section into a module."""
import ml_collections

from gendistill.nets.denoiser import Denoiser, one_hot_labels


def build_backbone(cfg: ml_collections.ConfigDict, spec):
  """Raw backbone F for data of `spec` (gendistill.data.DataSpec) from the `network` config section."""
  if cfg.kind == "unet":
    from gendistill.nets import unet  # pylint: disable=g-import-not-at-top
    height, width, channels = spec.shape
    if height != width:
      raise ValueError(f"The UNet needs square images; got {spec.shape}.")
    return unet.UNet(
        img_resolution=height, in_channels=channels, out_channels=channels, label_dim=spec.num_classes,
        model_channels=cfg.model_channels, channel_mult=tuple(cfg.channel_mult), num_blocks=cfg.num_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions), dropout=cfg.dropout, label_dropout=cfg.label_dropout,
        embedding_type=cfg.embedding_type)
  if cfg.kind == "mlp":
    from gendistill.nets import mlp  # pylint: disable=g-import-not-at-top
    if len(spec.shape) != 1:
      raise ValueError(f"The MLP takes vectors; got per-sample shape {spec.shape}.")
    return mlp.MLP(data_dim=spec.shape[0], label_dim=spec.num_classes, hidden=cfg.mlp_hidden,
                   depth=cfg.mlp_depth, dropout=cfg.dropout, label_dropout=cfg.label_dropout)
  raise ValueError(f"Unknown network.kind {cfg.kind!r}; expected 'unet' or 'mlp'.")


def build_denoiser(cfg: ml_collections.ConfigDict, spec) -> Denoiser:
  return Denoiser(backbone=build_backbone(cfg, spec), preconditioning=cfg.preconditioning,
                  sigma_data=cfg.sigma_data)


__all__ = ["Denoiser", "build_backbone", "build_denoiser", "one_hot_labels"]
