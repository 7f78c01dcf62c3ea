"""Adversarial Diffusion Distillation. `--config=configs/add.py:<dataset>[,smoke][,teacher=DIR][,init=DIR]`,
dataset in toy2d | digits | cifar10. digits distils an `edm` run of this library in `teacher=DIR` (default workdirs/demo/teacher,
made by `make demo`); cifar10 distils EDM's edm-cifar10-32x32-cond-vp.pkl converted by `python -m gendistill.convert
FILE.pkl DIR` (teacher.source='converted', `teacher=DIR`). The student starts from the teacher's parameters
(init='teacher'), so config.network is the teacher's network. toy2d distils the exact Gaussian-mixture teacher;
the student then starts from a random init, which at sigma 80 is a collapsed generator (see
gendistill/objectives/adversarial.py): `init=DIR` starts it from the network of an `edm` run on the same mixture
instead (teacher.init_workdir), as ADD starts from a pretrained diffusion model.
"""
from configs import base
from configs import edm as edm_configs
from configs import sid as sid_config


ARGS = ("toy2d", "digits", "cifar10")


def get_config(arg: str = "digits"):
  dataset, flags, teacher_dir = sid_config.parse(arg)
  c = base.get_config("add")
  teacher = edm_configs.get_config(dataset)  # the teacher's data and network sections
  c.data.update(teacher.data)
  c.network.update(teacher.network)
  o = c.objective.add
  if dataset == "toy2d":
    c.teacher.update(source="analytic", workdir=teacher_dir or "")  # a teacher= here is an error at validation
    c.network.update(dropout=0.0)
    o.critic.update(kind="mlp", hidden=256, depth=3)
    o.generator_optimizer.update(lr=5e-4, b1=0.5, b2=0.999)
    o.critic_optimizer.update(lr=5e-4, b1=0.5, b2=0.999)
    o.update(r1_gamma=1e-5)
    o.ema.update(decay=0.995)
    c.train.update(num_steps=4000, log_every=100, checkpoint_every=1000, sample_every=1000)
    c.eval.update(num_samples=4000, batch_size=4000)
  elif dataset == "digits":
    c.teacher.update(source="workdir", workdir=teacher_dir or sid_config.DEFAULT_TEACHER)
    o.init = "teacher"  # fail loudly if config.network is not the teacher's
    o.critic.update(kind="conv", channels=32, channel_mult=(1, 2, 2), hidden=128)
    o.generator_optimizer.update(lr=1e-4, b1=0.0, b2=0.99)
    o.critic_optimizer.update(lr=1e-4, b1=0.0, b2=0.99)
    o.ema.update(decay=0.995)
    c.train.update(num_steps=1500, log_every=50, checkpoint_every=500, sample_every=500)
    c.eval.update(num_samples=1000)
  elif dataset == "cifar10":
    sid_config.use_teacher(c, sid_config.TEACHERS["cifar10"], teacher_dir or "")
    o.init = "teacher"
    o.critic.update(kind="conv", channels=128, channel_mult=(1, 2, 2, 2), hidden=512)
    o.generator_optimizer.update(lr=1e-5, b1=0.0, b2=0.99)
    o.critic_optimizer.update(lr=1e-5, b1=0.0, b2=0.99)
    o.ema.update(decay=0.9999)
    c.data.update(batch_size=256)
    c.train.update(num_steps=200_000, log_every=100, checkpoint_every=5000, sample_every=5000, eval_every=50_000)
    c.eval.update(num_samples=50_000, batch_size=500)
  else:
    raise ValueError(f"Unknown dataset {dataset!r} for configs/add.py; expected toy2d, digits or cifar10.")
  for flag in flags:
    if flag.startswith("init="):
      sid_config.init_from(c, flag.split("=", 1)[1])
  if "smoke" in flags:
    base.smoke(c)
    if c.teacher.source in ("workdir", "converted"):  # a random teacher of the shrunk network: none trained needed
      c.teacher.update(source="random", workdir="")
    o.init = "auto"
    o.critic.update(hidden=32, depth=2, channels=8, channel_mult=(1, 2))
  return c
