"""Consistency distillation presets: `--config=configs/cd.py:<dataset>[,smoke][,grid25][,teacher=WORKDIR]`.

Datasets as configs/sid.py (toy2d: analytic teacher, student MLP from random weights; digits: the `edm` demo
teacher in `teacher=WORKDIR`, student started from it; cifar10, imagenet64: paper settings for accelerators).
Teachers (teacher.source='converted', `teacher=DIR` the output of `python -m gendistill.convert FILE.pkl DIR`;
the `network` section is the file's architecture, so the student starts from the teacher): cifar10 EDM's
edm-cifar10-32x32-uncond-vp.pkl (unconditional, as every consistency paper's CIFAR-10 model), imagenet64 EDM's
edm-imagenet-64x64-cond-adm.pkl (ADM). `consistency_config` holds what the consistency presets (cd, ct, ict,
ect) share.

cifar10 (CM paper and openai/consistency_models_cifar10 configs/cifar10_ve_cd.py): unconditional, N = 18, Heun,
mu = 0 (target = sg[online]), RAdam lr 4e-4 with a 10 Mimg warm-up, batch 512, 800k iterations, student dropout
0, EMA 0.9999, the student from the teacher. The official distance is LPIPS, which this library lacks: L2 here.
imagenet64 (openai/consistency_models README): class-conditional, N = 40, target EMA mu = 0.95, RAdam lr 8e-6,
batch 2048, 600k iterations, EMA 0.9999432, dropout 0; LPIPS replaced by L2 again. The 2-step sampler's second
level is t_22 of the 40-level grid (the official `--ts 0,22,39`).
"""
from configs import sid as sid_config

ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "imagenet64")


def consistency_config(name: str, arg: str):
  """(config, dataset, flags): data, network, teacher and loop per dataset, plus the consistency presets' shared
  settings (the sampler's EMA, dropout, the unconditional CIFAR-10 of the papers)."""
  c, dataset, flags = sid_config.distillation_config(name, arg)
  o = c.objective[name]
  if dataset == "toy2d":
    o.ema.update(halflife_kimg=20.0, rampup_ratio=0.05)
    o.optimizer.update(name="radam", lr=1e-3)
  elif dataset == "digits":
    o.ema.update(halflife_kimg=10.0, rampup_ratio=0.05)
    o.optimizer.update(name="radam", lr=1e-4)
  elif dataset == "cifar10":
    # Every consistency paper's CIFAR-10 model is unconditional: EDM's unconditional teacher (and data).
    sid_config.use_teacher(c, sid_config.TEACHERS["cifar10,uncond"], c.teacher.workdir)
    c.network.dropout = 0.0
    c.train.num_steps = 800_000
  elif dataset == "imagenet64":
    c.network.dropout = 0.0
  return c, dataset, flags


def get_config(arg: str = "digits"):
  c, dataset, flags = consistency_config("cd", arg)
  o = c.objective.cd
  if dataset == "toy2d":
    o.update(num_scales=18, target="online", target_ema=0.0)
    # lr 1e-4 from a trained network (init=DIR); from random weights the cosine from 1e-3 (on the 8-ring a constant
    # 1e-3 drifted, 1-step SW 0.11 -> 0.15) over 6000 steps, not 3000: on the tuning mixtures SW fell 1.4-2.4x ->
    # 1.0-1.1x at one step (experiments/toy_family.md, findings). A longer run: set decay_steps too.
    if sid_config.from_network(flags):
      o.optimizer.update(lr=1e-4)
    else:
      c.train.num_steps = 6000
      sid_config.toy_few_step_rate(o.optimizer, c.train.num_steps)
  elif dataset == "digits":
    o.update(num_scales=18, target="online", target_ema=0.0, init="teacher")
  elif dataset == "cifar10":
    o.update(num_scales=18, solver="heun", target="online", target_ema=0.0, distance="l2", init="teacher")
    o.optimizer.update(name="radam", lr=4e-4, warmup_steps=10_000_000 // 512)
    o.ema.update(halflife_kimg=0.0, decay=0.9999)
    c.data.batch_size = 512
  elif dataset == "imagenet64":
    o.update(num_scales=40, solver="heun", target="ema", target_ema=0.95, distance="l2", init="teacher",
             sample_sigmas=(80.0, 1.3823679566485092))
    o.optimizer.update(name="radam", lr=8e-6)
    o.ema.update(halflife_kimg=0.0, decay=0.9999432189950708)
    c.data.batch_size = 2048
    c.train.num_steps = 600_000
  return sid_config.finish(c, flags)
