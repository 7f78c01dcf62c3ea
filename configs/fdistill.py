"""f-distill presets: `--config=configs/fdistill.py:<dataset>[,smoke][,grid25][,DIVERGENCE][,teacher=WORKDIR]`.

Datasets as configs/sid.py; DIVERGENCE is one of gendistill.objectives.score_common.F_DIVERGENCES (default: js;
forward_kl is the paper's best on CIFAR-10, js on ImageNet-64). Method settings follow DMD2's (dmd2.py) with the
generator's adversarial weight 1e-3 and TTUR 5 [paper; only NVIDIA's reimplementation is public, unverified].
"""
from configs import sid as sid_config
from gendistill.objectives import score_common


ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "imagenet64", "toy2d,forward_kl")

def get_config(arg: str = "digits"):
  c, dataset, flags = sid_config.distillation_config("fdistill", arg)
  o = c.objective.fdistill
  for name in score_common.F_DIVERGENCES:
    if name in flags:
      o.divergence = name
  if dataset == "toy2d":
    o.generator_optimizer.update(lr=2e-4, warmup_steps=20)
    o.fake_score_optimizer.update(lr=1e-3, warmup_steps=100)
    o.critic_optimizer.update(lr=1e-3, warmup_steps=100)
    o.ema.update(halflife_kimg=20.0)
    c.train.num_steps = 5000
  elif dataset == "digits":
    o.generator_optimizer.update(lr=2e-5, warmup_steps=20)
    o.fake_score_optimizer.update(lr=2e-5, warmup_steps=100)
    o.critic_optimizer.update(lr=2e-5, warmup_steps=100)
    o.ema.update(halflife_kimg=10.0)
  elif dataset == "cifar10":
    o.divergence = "forward_kl" if not any(n in flags for n in score_common.F_DIVERGENCES) else o.divergence
    c.data.batch_size = 280
    c.train.num_steps = 400_000
  elif dataset == "imagenet64":
    c.data.batch_size = 280
    c.train.num_steps = 400_000
  if "smoke" in flags:
    o.critic.update(hidden=16, depth=1)
  return sid_config.finish(c, flags)
