"""Easy consistency tuning presets: `--config=configs/ect.py:<dataset>[,smoke][,grid25][,teacher=DIR]`.

ECT (Geng et al. 2024) fine-tunes a diffusion model (the teacher's parameters; the teacher itself is not called)
into a consistency model with continuous pairs (t, r) whose gap shrinks by q every stage. Datasets as
configs/cd.py (toy2d: the analytic teacher has no network, so the student starts from random weights there).
cifar10 (locuslab/ect run_ecm.sh, training/loss.py): unconditional, batch 128, RAdam lr 1e-4, dropout 0.2, EMA
0.9999, q 2, k 8, b 1, c 0, stages of 25k iterations (250 ticks of 12.8 kimg), t ~ lognormal(-1.1, 2.0),
sigma_min 0.003, 400k iterations (the README's 3.60 / 2.11 FIDs; run_ecm.sh stops at 200k), 2-step level 0.821.
imagenet64 (the `imgnet` branch, EDM2-S): q 4, t ~ lognormal(-0.8, 1.6), weight EDM's lambda(t), Adam lr 1e-3
(0.9, 0.99), dropout 0.4, batch 128, 100k iterations, stages of 25k, 2-step level 1.526, from EDM2-S. The
branch's inverse-sqrt learning-rate decay and post-hoc EMA are not in this library (constant lr and EMA 0.9999
stand in).
Teachers: teacher.source='converted' with `teacher=DIR` (cifar10: the converted edm-cifar10-32x32-uncond-vp.pkl;
imagenet64: EDM2's edm2-img64-s-*.pkl, converted with `python -m gendistill.convert FILE.pkl DIR
--preset=edm2-img64-s`); the network section is the file's architecture and the student starts from its
parameters.
"""
from configs import cd as cd_config
from configs import sid as sid_config

ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "imagenet64")


def get_config(arg: str = "digits"):
  c, dataset, flags = cd_config.consistency_config("ect", arg)
  o = c.objective.ect
  if dataset == "toy2d":
    # The mean of squares, not ECT's L2 norm: with a one-sample target the norm's fixed point is a geometric
    # median of the target, not its mean; in 2-D that moves mass between modes (objectives/consistency.py,
    # "Distances"; experiments/toy_family.md).
    o.update(stage_steps=400, distance="l2")
    # From random weights: held-out, every mode at two steps on 5/5 mixtures where a constant 1e-4 kept them on 3/5.
    # From the EDM network too: every mode of the tuning mixtures at one step, where 1e-4 lost one on two of three
    # (experiments/toy_family.md).
    sid_config.toy_few_step_rate(o.optimizer, c.train.num_steps)
  elif dataset == "digits":
    o.update(stage_steps=500, init="teacher")
    o.optimizer.update(lr=1e-4)
  elif dataset == "cifar10":
    c.network.dropout = 0.2
    o.update(q=2.0, k=8.0, b=1.0, huber_c=0.0, stage_steps=25_000, init="teacher")
    o.optimizer.update(name="radam", lr=1e-4)
    o.ema.update(halflife_kimg=0.0, decay=0.9999)
    c.data.batch_size = 128
    c.train.num_steps = 400_000
  elif dataset == "imagenet64":
    sid_config.use_teacher(c, "edm2-img64-s", c.teacher.workdir)
    c.network.dropout = 0.4
    o.update(q=4.0, p_mean=-0.8, p_std=1.6, weighting="edm", stage_steps=25_000, init="teacher",
             sample_sigmas=(80.0, 1.526))
    o.optimizer.update(name="adam", lr=1e-3, b1=0.9, b2=0.99)
    o.ema.update(halflife_kimg=0.0, decay=0.9999)
    c.data.batch_size = 128
    c.train.num_steps = 100_000
  return sid_config.finish(c, flags)
