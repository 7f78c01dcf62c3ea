"""sCD presets: see configs/sct.py (the same datasets and settings, t ~ lognormal(-0.8, 1.6), a teacher)."""
from configs import sct as sct_config

ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10")


def get_config(arg: str = "digits"):
  return sct_config.scm_config("scd", arg)
