"""EDM teacher training. `--config=configs/edm.py:<dataset>[,smoke]`, dataset in toy2d | digits | cifar10."""
from configs import base

ARGS = ("digits", "toy2d", "cifar10")


def get_config(arg: str = "digits"):
  dataset, flags = base.parse_arg(arg)
  c = base.get_config("edm")
  if dataset == "digits":
    # Class-conditional teacher of the embedded demo (`make demo`): a few minutes on a 2-core CPU. The grid and
    # the evaluation sample 100 at a time, so they share one compiled sampler.
    c.data.update(name="digits", image_size=16, batch_size=64, conditional=True)
    c.network.update(**base.unet_preset("digits"), label_dropout=0.1)
    c.objective.edm.optimizer.update(lr=2e-3, warmup_steps=200)
    c.objective.edm.ema.update(halflife_kimg=50.0, rampup_ratio=0.05)
    c.train.update(num_steps=1000, log_every=50, checkpoint_every=250, sample_every=0, num_grid_samples=100)
    c.eval.update(num_samples=1000, batch_size=100)
  elif dataset == "toy2d":
    c.data.update(name="toy2d", toy2d_kind="ring8", batch_size=512, conditional=False)
    c.network.update(kind="mlp", mlp_hidden=256, mlp_depth=4, dropout=0.0)
    c.objective.edm.optimizer.update(lr=1e-3, warmup_steps=100)
    c.objective.edm.ema.update(halflife_kimg=100.0)
    c.train.update(num_steps=5000, log_every=100, checkpoint_every=1000, sample_every=1000)
    c.eval.update(num_samples=4000, batch_size=4000)
  elif dataset == "cifar10":
    # EDM's DDPM++ CIFAR-10 conditional teacher (docs/objectives/teacher_training.md); meant for accelerators.
    c.data.update(name="tfds", tfds_name="cifar10", image_size=32, batch_size=512, conditional=True)
    c.network.update(**base.unet_preset("cifar10"))
    c.objective.edm.optimizer.update(lr=1e-3, warmup_steps=10_000_000 // 512)
    c.objective.edm.ema.update(halflife_kimg=500.0, rampup_ratio=0.05)
    c.train.update(num_steps=200_000_000 // 512, log_every=100, checkpoint_every=5000, sample_every=5000,
                   eval_every=50_000)
    c.eval.update(num_samples=50_000, batch_size=500)
  else:
    raise ValueError(f"Unknown dataset {dataset!r} for configs/edm.py; expected digits, toy2d or cifar10.")
  if "smoke" in flags:
    base.smoke(c)
  return c
