"""f-distill presets: `--config=configs/fdistill.py:<dataset>[,smoke][,grid25][,DIVERGENCE][,teacher=WORKDIR]`.

Datasets as configs/sid.py; DIVERGENCE is one of gendistill.objectives.score_common.F_DIVERGENCES (default: js;
forward_kl is the paper's best on CIFAR-10, js on ImageNet-64). Method settings follow DMD2's (dmd2.py) with the
generator's adversarial weight 1e-3 and TTUR 5 [paper; only NVIDIA's reimplementation is public, unverified].
toy2d (students from random weights) adds DMD's regression loss and updates the generator every step.
"""
from configs import dmd2 as dmd2_config
from configs import sid as sid_config
from gendistill.objectives import score_common


ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "imagenet64", "toy2d,forward_kl")

def get_config(arg: str = "digits"):
  c, dataset, flags = sid_config.distillation_config("fdistill", arg)
  o = c.objective.fdistill
  for name in score_common.F_DIVERGENCES:
    if name in flags:
      o.divergence = name
  dmd2_config.apply_method_settings(c, o, dataset, flags)
  if dataset == "cifar10" and not any(n in flags for n in score_common.F_DIVERGENCES):
    o.divergence = "forward_kl"
  return sid_config.finish(c, flags)
