"""Consistency training presets: `--config=configs/ct.py:<dataset>[,smoke][,grid25]`.

CT learns from data alone (no teacher; the student starts from random weights), with the adaptive curriculum
N(k), mu(k). Datasets as configs/cd.py.
cifar10 (openai/consistency_models_cifar10 configs/cifar10_ve_ct_adaptive.py): unconditional, s0 2, s1 150,
mu0 0.9, K = 800k, RAdam lr 2e-4 (the released config; the paper's table says 4e-4) with a 10 Mimg warm-up,
batch 512, EMA 0.9999, dropout 0; LPIPS replaced by L2.
imagenet64 (openai/consistency_models README): s0 2, s1 200, mu0 0.95, K = 800k, RAdam lr 1e-4, batch 2048,
EMA 0.9999432, dropout 0; the 2-step sampler's second level is t_106 of the 201-level grid (`--ts 0,106,200`).
"""
from configs import cd as cd_config
from configs import sid as sid_config

ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "imagenet64")
PAPER_STEPS = 800_000   # K, the length of the papers' CIFAR-10 and ImageNet-64 runs and curricula


def get_config(arg: str = "digits"):
  c, dataset, flags = cd_config.consistency_config("ct", arg)
  c.teacher.update(source="none", workdir="")
  o = c.objective.ct
  if dataset == "toy2d":
    # Not CIFAR-10's s1 150, mu0 0.9: those are sized for K = 800k steps, where N(k) is still 10 and the target
    # EMA's half-life ~30 steps after 3k steps. Compressed into a 3k-step run they give N = 151 levels and a
    # half-life of ~490 steps, too slow for consistency to propagate from small sigma up to sigma_max: the
    # one-step output stayed at the data mean (sample std 0.02; experiments/toy_collapse.md). s1 80 over 12000
    # steps gives 81 levels and a final half-life of ~260 steps; against 3000 steps with s1 40, the held-out
    # mixtures pass 1/5 at one step (was 0/5) and 4/5 at two (was 2/5), every mode at two steps on all five
    # (experiments/toy_family.md).
    o.update(start_scales=2, end_scales=80, start_ema=0.9)
    c.train.num_steps = 12000
  elif dataset == "digits":
    # The first 8000 steps of CIFAR-10's 800k-step curriculum (N 2 -> 16 levels), not the whole curriculum
    # squeezed into the run: that reaches 25 levels by step 100 and 151 at the end, the consistency never climbs
    # to sigma_max and the one-step samples stayed noise (digits FD 948 after 4000 steps). With this schedule:
    # FD 44 at step 600, 9.4 at 4000, 6.8 at 8000 (experiments/digits_every_objective.md).
    o.update(start_scales=2, end_scales=150, start_ema=0.9, total_steps=PAPER_STEPS)
    o.optimizer.update(lr=2e-4)
    c.train.num_steps = 8000
  elif dataset == "cifar10":
    o.update(start_scales=2, end_scales=150, start_ema=0.9, distance="l2", total_steps=PAPER_STEPS)
    o.optimizer.update(name="radam", lr=2e-4, warmup_steps=10_000_000 // 512)
    o.ema.update(halflife_kimg=0.0, decay=0.9999)
    c.data.batch_size = 512
  elif dataset == "imagenet64":
    o.update(start_scales=2, end_scales=200, start_ema=0.95, distance="l2", total_steps=PAPER_STEPS,
             sample_sigmas=(80.0, 1.9128436206953614))
    o.optimizer.update(name="radam", lr=1e-4)
    o.ema.update(halflife_kimg=0.0, decay=0.9999432189950708)
    c.data.batch_size = 2048
    c.train.num_steps = PAPER_STEPS
  return sid_config.finish(c, flags)
