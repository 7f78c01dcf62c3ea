"""Progressive distillation presets: `--config=configs/progressive.py:<dataset>[,smoke][,grid25][,teacher=WORKDIR]`.

Datasets as configs/sid.py. Every preset uses the cosine schedule over the log-SNR range of an EDM teacher
(sigma in [0.002, 80]; the official range is [-20, 20], made for its own VP teachers) and sets
train.num_steps = rounds x steps_per_round.
toy2d: analytic teacher with 64 DDIM steps, halved 6 times down to 1 step, 500 steps per round; the first
student starts from random weights (the analytic teacher has no network to copy).
digits: the demo `edm` teacher with 64 DDIM steps down to 1, 1000 steps per round, the student from the teacher.
cifar10 (google-research diffusion_distillation config/cifar_distill.py): unconditional, 8192 teacher steps ->
1, 50k steps per halving, batch 128, Adam lr 5e-5 annealed linearly to 0 every round, gradient clip 1, no EMA,
student dropout 0, x-prediction with truncated-SNR weighting, clipped x_hat when sampling.
imagenet64 (config/imagenet64_distill.py): class-conditional, 1024 teacher steps -> 1, 50k per halving, batch
2048, Adam lr 1e-4, the rest as cifar10.
"""
from configs import sid as sid_config
from gendistill.objectives import progressive

ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "imagenet64")


def get_config(arg: str = "digits"):
  c, dataset, flags = sid_config.distillation_config("progressive", arg)
  o = c.objective.progressive
  o.update(logsnr_min=progressive.EDM_LOGSNR_RANGE[0], logsnr_max=progressive.EDM_LOGSNR_RANGE[1])
  if dataset == "toy2d":
    o.update(teacher_steps=64, final_steps=1, steps_per_round=500)
    o.optimizer.update(lr=1e-3)
  elif dataset == "digits":
    o.update(teacher_steps=64, final_steps=1, steps_per_round=1000, clip_denoised=1.0)
    o.optimizer.update(lr=1e-4)
  elif dataset == "cifar10":
    c.data.conditional = False
    c.network.dropout = 0.0
    o.update(teacher_steps=8192, final_steps=1, steps_per_round=50_000, loss="snr_trunc", clip_denoised=1.0)
    o.optimizer.update(name="adam", lr=5e-5, grad_clip_norm=1.0)
    c.data.batch_size = 128
  elif dataset == "imagenet64":
    c.network.dropout = 0.0
    o.update(teacher_steps=1024, final_steps=1, steps_per_round=50_000, loss="snr_trunc", clip_denoised=1.0)
    o.optimizer.update(name="adam", lr=1e-4, grad_clip_norm=1.0)
    c.data.batch_size = 2048
  if "smoke" in flags:
    o.update(teacher_steps=8, steps_per_round=2)
  rounds = progressive.num_rounds(o.teacher_steps, o.final_steps)
  c.train.num_steps = rounds * o.steps_per_round
  return sid_config.finish(c, flags)
