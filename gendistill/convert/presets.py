"""Network sections of the published EDM teachers (NVlabs/edm, `https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/`),
named after their files, plus tiny versions for tests.

`TEACHERS[name]` = dict(network=<fields of a `network` config section>, shape=(H, W, C), num_classes=n).
`python -m gendistill.convert FILE OUT` reads the architecture from a .pkl itself; a preset is needed only for
state-dict files (.pt, .safetensors, .npz), which carry no constructor arguments: `--preset NAME`.
The EDM file names' vp/ve denote the DDPM++/NCSN++ architectures; their preconditioning is EDM's.

EDM2's presets (`edm2-img64-xs` .. `edm2-img64-xl`, `tiny-edm2`) are defined beside the network
(nets/edm2.py `TEACHER_PRESETS`, from the published training configurations) and listed here too: `get` and
`names` cover both, so the converter, the configs and the tests look every teacher up in one place. They are
merged lazily because this module (TEACHERS) must import without jax (the fixture scripts run in a torch-only
environment).
"""

_DDPMPP = dict(kind="unet", preconditioning="edm", sigma_data=0.5, model_channels=128, channel_mult=(2, 2, 2),
               num_blocks=4, attn_resolutions=(16,), embedding_type="positional", channel_mult_noise=1,
               encoder_type="standard", resample_filter=(1, 1), channel_mult_emb=4, augment_dim=9, dropout=0.13,
               label_dropout=0.0)
_NCSNPP = dict(_DDPMPP, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
               resample_filter=(1, 3, 3, 1))
_ADM = dict(kind="adm", preconditioning="edm", sigma_data=0.5, model_channels=192, channel_mult=(1, 2, 3, 4),
            num_blocks=3, attn_resolutions=(32, 16, 8), channel_mult_emb=4, augment_dim=0, dropout=0.1,
            label_dropout=0.0)
_64 = dict(channel_mult=(1, 2, 2, 2))

TEACHERS = {
    "edm-cifar10-32x32-cond-vp": dict(network=_DDPMPP, shape=(32, 32, 3), num_classes=10),
    "edm-cifar10-32x32-uncond-vp": dict(network=_DDPMPP, shape=(32, 32, 3), num_classes=0),
    "edm-cifar10-32x32-cond-ve": dict(network=_NCSNPP, shape=(32, 32, 3), num_classes=10),
    "edm-cifar10-32x32-uncond-ve": dict(network=_NCSNPP, shape=(32, 32, 3), num_classes=0),
    "edm-ffhq-64x64-uncond-vp": dict(network=dict(_DDPMPP, **_64, dropout=0.05), shape=(64, 64, 3),
                                     num_classes=0),
    "edm-ffhq-64x64-uncond-ve": dict(network=dict(_NCSNPP, **_64, dropout=0.05), shape=(64, 64, 3),
                                     num_classes=0),
    "edm-afhqv2-64x64-uncond-vp": dict(network=dict(_DDPMPP, **_64, dropout=0.25), shape=(64, 64, 3),
                                       num_classes=0),
    "edm-afhqv2-64x64-uncond-ve": dict(network=dict(_NCSNPP, **_64, dropout=0.25), shape=(64, 64, 3),
                                       num_classes=0),
    "edm-imagenet-64x64-cond-adm": dict(network=_ADM, shape=(64, 64, 3), num_classes=1000),
    # Tiny networks of each architecture (tests and fixtures: scripts/make_edm_fixtures.py).
    "tiny-ddpmpp": dict(network=dict(_DDPMPP, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                                     attn_resolutions=(4,), augment_dim=9, dropout=0.0),
                        shape=(8, 8, 3), num_classes=4),
    "tiny-ncsnpp": dict(network=dict(_NCSNPP, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                                     attn_resolutions=(4,), augment_dim=9, dropout=0.0),
                        shape=(8, 8, 3), num_classes=4),
    "tiny-adm": dict(network=dict(_ADM, model_channels=32, channel_mult=(1, 2), num_blocks=1,
                                  attn_resolutions=(4,), dropout=0.0),
                     shape=(8, 8, 3), num_classes=4),
}


def all_teachers() -> dict:
  """Every teacher preset: EDM's (TEACHERS) and EDM2's (nets/edm2.py TEACHER_PRESETS)."""
  from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top  (jax; see the module docstring)
  return {**TEACHERS, **edm2.TEACHER_PRESETS}


def names() -> list:
  return sorted(all_teachers())


def get(name: str) -> dict:
  """dict(network=..., shape=..., num_classes=...) of a teacher preset (a fresh copy)."""
  table = TEACHERS if name in TEACHERS else all_teachers()
  if name not in table:
    raise ValueError(f"Unknown teacher preset {name!r}; expected one of {sorted(table)}.")
  t = table[name]
  return dict(network=dict(t["network"]), shape=tuple(t["shape"]), num_classes=t["num_classes"])
