"""DMD2 presets: `--config=configs/dmd2.py:<dataset>[,smoke][,grid25][,fewstep][,teacher=WORKDIR]`.

Datasets as configs/sid.py. imagenet64 is DMD2's official EDM recipe (experiments/imagenet, from scratch):
AdamW lr 2e-6 for both, TTUR 5, classifier on the fake score's bottleneck with diffusion-GAN noise (t up to
1000), gen_cls_loss_weight 3e-3, cls_loss_weight 1e-2, grad-norm clip 10, batch 280 (40 x 7 GPUs), 500-step
warm-up; FID 1.51 at 200k iterations; the teacher, as the official one, EDM's ADM network (the converted
edm-imagenet-64x64-cond-adm.pkl in `teacher=DIR`, see configs/sid.py). cifar10 uses the same method settings
(DMD2 has no CIFAR-10 recipe).
`fewstep`: a 4-step generator on DMD2's steps (999, 749, 499, 249) with backward simulation.
"""
from configs import sid as sid_config


ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "imagenet64", "toy2d,fewstep")

def get_config(arg: str = "digits"):
  c, dataset, flags = sid_config.distillation_config("dmd2", arg)
  o = c.objective.dmd2
  if "fewstep" in flags:
    o.denoising_timesteps = (999, 749, 499, 249)
  apply_method_settings(c, o, dataset, flags)
  return sid_config.finish(c, flags)


def one_step_toy_settings(o, flags):
  """DMD's regression loss and a generator update every step, for one-step toy students (from either start).

  DMD2 drops the regression because its students start from the teacher; from random weights its one-step
  generator locked onto 2-3 of 6 modes within 1000 steps and a 100x GAN weight did not free it
  (experiments/toy_collapse.md), and f-distill without it lost the small far mode of every held-out mixture. With
  the regression but DMD2's 5:1 update rule (1000 generator updates in 5000 steps) both still missed small modes
  of the tuning mixtures; one generator update per step found them (experiments/toy_family.md, tuning runs).
  The generator's rate is DMD's toy rate, 2e-3, from either start.
  """
  o.update(regression_weight=0.25, regression_pairs=4096, regression_batch_size=256, generator_every=1)
  # As configs/dmd.py:toy2d (the same DM loss and anchor): the generator needs a 10x larger step than DMD2's to
  # sharpen its modes (held-out near-mode fraction 0.80-0.90 -> 0.93-0.97 from random weights, 0/5 -> 4/5 passing),
  # from a trained network too once every rate decays over the run (apply_method_settings).
  o.generator_optimizer.lr = 2e-3
  if "smoke" in flags:   # as configs/dmd.py's smoke: a few pairs, not 4096 Heun solves at init
    o.update(regression_pairs=8, regression_batch_size=4, regression_chunk=8)


def apply_method_settings(c, o, dataset: str, flags):
  """Optimizers, EMA, batch and length per dataset, shared with f-distill (which follows DMD2's settings)."""
  if dataset == "toy2d":
    # The DM normaliser mean|x - mu_real| averages only 2 coordinates here and comes close to 0 for samples at a
    # mode's centre; unclipped, those samples' 1/w weights skewed the mode weights on the 5x5 grid (mode TV 0.18).
    o.weight_min = 0.05
    o.generator_optimizer.update(lr=2e-4, warmup_steps=20)   # the few-step rate; one step: one_step_toy_settings
    o.fake_score_optimizer.update(lr=1e-3, warmup_steps=100)
    o.critic_optimizer.update(lr=1e-3, warmup_steps=100)
    o.ema.update(halflife_kimg=20.0)
    c.train.num_steps = 5000
    if "fewstep" not in flags:
      one_step_toy_settings(o, flags)
      # As configs/dmd.py:toy2d, every rate decays over the run (from random weights dmd2's tuning SW 0.89, 0.76,
      # 1.21x -> 0.81, 0.65, 0.85x of the teacher's; from a trained network near-mode fraction 0.89-0.95 -> 0.93-0.97).
      sid_config.decay_over_run(c, o.generator_optimizer, o.fake_score_optimizer, o.critic_optimizer)
  elif dataset == "digits":
    # lr 1e-4 for every role, each cosine ending with the run: one-step FD 5.79 at 2000 steps against 7.58 for a
    # constant 2e-5 and 7.46 for 5e-5 decayed. The generator's cosine must span its own updates (1 in 5 steps):
    # over 2000 of them it stayed near 1e-4 and collapsed at step 2000 (FD 896; experiments/digits_every_objective.md).
    # SiD's digits length: one-step FD 4.83 (dmd2) and 4.88 (f-distill) after 5000 steps against 5.79 and 5.83
    # after 2000 (the teacher's Heun NFE 35: 2.98; experiments/digits_every_objective.md).
    c.train.num_steps = 5000
    o.generator_optimizer.update(lr=1e-4, warmup_steps=20)
    o.fake_score_optimizer.update(lr=1e-4, warmup_steps=100)
    o.critic_optimizer.update(lr=1e-4, warmup_steps=100)
    sid_config.decay_over_run(c, o.generator_optimizer, every=o.generator_every)
    sid_config.decay_over_run(c, o.fake_score_optimizer, o.critic_optimizer)
    o.ema.update(halflife_kimg=10.0)
  elif dataset in ("cifar10", "imagenet64"):
    c.data.batch_size = 280
    c.train.num_steps = 400_000
  if "smoke" in flags:
    o.critic.update(hidden=16, depth=1)
