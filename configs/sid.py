"""SiD distillation presets: `--config=configs/sid.py:<dataset>[,smoke][,grid25][,uncond][,teacher=DIR][,init=DIR]`.

dataset:
  toy2d      2-D Gaussian mixture (8-ring with unequal weights; `grid25`: the 5x5 grid with unequal weights),
             the analytic (exact) teacher, MLP generator and fake score initialised randomly (the analytic teacher
             has no network to copy).
  digits     the embedded 16x16 digits, class-conditional; the teacher is the `edm` run in `teacher=DIR`
             (default workdirs/demo/teacher, made by `make demo`); generator and fake score start from it.
  cifar10    SiD's CIFAR-10 recipe (paper/official code): batch 256, Adam(0, 0.999) lr 1e-5, alpha 1.2,
             sigma_init 2.5, t_max 800, EMA 0.5 Mimg, 500 Mimg. Teacher: EDM's edm-cifar10-32x32-cond-vp.pkl
             (`uncond`: edm-cifar10-32x32-uncond-vp.pkl, unconditional data) converted by
             `python -m gendistill.convert FILE.pkl DIR`, given as `teacher=DIR` (teacher.source='converted').
             Meant for accelerators.
  imagenet64 SiD's ImageNet 64x64 recipe: batch 8192, lr 4e-6, dropout 0.1, no augmentation, EMA 2 Mimg,
             1000 Mimg (alpha 1.2). Teacher: EDM's ADM network, edm-imagenet-64x64-cond-adm.pkl converted to
             `teacher=DIR`, as in the paper.
For cifar10 and imagenet64 the `network` section is the published file's architecture (`TEACHERS`, looked up in
gendistill.convert.presets), so the generator and fake score start from the teacher's parameters (init='teacher':
a converted teacher of another architecture is an error at init; see `use_teacher`).
`init=DIR` (every preset built on `distillation_config`): the student networks start from the network of the run
in DIR (teacher.init_workdir; e.g. configs/edm.py:toy2d trained on the same data: the analogue of starting from
the teacher's weights when the teacher is the analytic one), with the objective's init 'teacher' (a network of
another shape is an error). `smoke` shrinks everything for tests; with a network teacher it uses a randomly initialised teacher of the
(shrunk) network section (teacher.source = 'random') so that it runs without a trained or converted one.

`distillation_config` is shared by the presets of every score-distillation objective (sid, sida, diff_instruct,
dmd, dmd2, fdistill) and the consistency presets (cd, ect): data, network, teacher and loop per dataset; each
preset then sets its method's keys.
"""
from configs import base
from configs import edm as edm_config
from gendistill.convert import presets as teacher_presets

DEFAULT_TEACHER = "workdirs/demo/teacher"
DATASETS = ("toy2d", "digits", "cifar10", "imagenet64")
ARGS = ("toy2d", "toy2d,grid25", "digits", "cifar10", "cifar10,uncond", "imagenet64")
# The published teacher of each dataset (gendistill.convert.presets names, after the files).
TEACHERS = {"cifar10": "edm-cifar10-32x32-cond-vp", "cifar10,uncond": "edm-cifar10-32x32-uncond-vp",
            "imagenet64": "edm-imagenet-64x64-cond-adm"}


def parse(arg: str):
  """'digits,smoke,teacher=/x' -> ('digits', {'smoke'}, '/x' or None); an 'init=DIR' flag stays in flags."""
  dataset, flags = base.parse_arg(arg, takes_teacher=True)
  teacher = None
  for flag in list(flags):
    if flag.startswith("teacher="):
      teacher = flag.split("=", 1)[1]
      flags.discard(flag)
  return dataset, flags, teacher


def init_from(c, workdir: str):
  """Students start from the network of the run in `workdir` (teacher.init_workdir; e.g. configs/edm.py:toy2d
  trained on the same data, the analogue of starting from the teacher's weights): the objective's init becomes
  'teacher', so a network of another shape is an error at init. The preset flag `init=DIR` does this."""
  c.teacher.init_workdir = workdir
  o = c.objective[c.objective.name]
  if "init" in o:
    o.init = "teacher"


def toy_rates(o, num_steps: int, grad_clip_norm: float = 0.0):
  """SiD's toy2d rates, shared by the presets of its family: generator lr 5e-4 (its gradient clipped to
  `grad_clip_norm`, 0 = off), fake score 1e-3, both decayed to 0 by a cosine over `num_steps`."""
  o.generator_optimizer.update(lr=5e-4, decay_steps=num_steps, grad_clip_norm=grad_clip_norm)
  o.fake_score_optimizer.update(lr=1e-3, decay_steps=num_steps)


def decay_over_run(c, *optimizers, every: int = 1):
  """Each optimizer's rate decayed to 0 by a cosine that ends with the run. A schedule counts its role's own
  updates, so for a role updated on every `every`-th step (TTUR) it spans train.num_steps // every of them."""
  for optimizer in optimizers:
    optimizer.decay_steps = c.train.num_steps // every


def toy_few_step_rate(optimizer, num_steps: int):
  """The few-step toy2d students' rate (cd, sct, scd and meanflow from random weights; ect from either start): lr
  1e-3 decayed to 0 by a cosine over `num_steps`. A constant 1e-3 drifted apart after ~1k steps and a constant 1e-4
  under-trained, losing small modes (experiments/toy_family.md, findings)."""
  optimizer.update(lr=1e-3, decay_steps=num_steps)


def from_network(flags) -> bool:
  """Whether the preset flag `init=DIR` starts the students from a trained network (else, on toy2d, from random
  weights: the analytic teacher has none to copy), for settings that differ between the two starts."""
  return any(flag.startswith("init=") for flag in flags)


def use_teacher(c, preset: str, workdir: str = ""):
  """The published teacher `preset` (gendistill.convert.presets) as the run's teacher: its architecture becomes
  the `network` section (so the students start from the teacher), its resolution and conditioning the data's,
  and teacher.source='converted' with teacher.workdir the directory `python -m gendistill.convert` wrote. An
  objective whose init is 'auto' gets 'teacher': a converted teacher of another architecture is then an error at
  init instead of a silent random start."""
  arch = teacher_presets.get(preset)
  unknown = sorted(set(arch["network"]) - set(c.network))
  if unknown:
    raise ValueError(f"Teacher preset {preset!r} sets network keys {unknown} that the network section lacks.")
  c.network.update(**arch["network"])
  c.data.update(image_size=arch["shape"][0], conditional=bool(arch["num_classes"]))
  c.teacher.update(source="converted", workdir=workdir)
  o = c.objective[c.objective.name]
  if o.get("init") == "auto":
    o.init = "teacher"


# Run length of the one-step score-distillation presets on toy mixtures (sid, sida, diff_instruct, dmd; sid from
# random weights runs twice as long, and toy_long_recipe four times). At 3000 steps the small thin modes of
# held-out-like mixtures were still 1.5-3.5x too wide across their narrow axis; twice the steps sharpened them
# (experiments/toy_family.md, tuning runs). dmd2 and f-distill set their own.
TOY_SCORE_STEPS = 6000


def toy_long_recipe(c, o):
  """SIM's toy2d recipe (from either start), also SiD's and SiDA's from a trained network (init=DIR): 4 x
  TOY_SCORE_STEPS with toy_rates, the generator's gradient clipped at norm 10 and Adam b1 0.9, not SiD's 0.

  b1 = 0 lets one gradient spike move every weight by up to 31.6 lr; the momentum is what keeps these long runs on
  the data (SiD's clipped 24000-step run from a network with b1 0 went non-finite on tuning mixture family:6).
  Held-out: SIM passed 5 of 5 mixtures from random weights (12000 steps: 1 of 5); from the network SIM, SiD and SiDA
  passed 5, 4 and 5 of 5 (6000 steps, b1 0: 1, 2 and 1; experiments/toy_family.md).
  """
  c.train.num_steps = 4 * TOY_SCORE_STEPS
  toy_rates(o, c.train.num_steps, grad_clip_norm=10.0)
  o.generator_optimizer.update(b1=0.9)


def distillation_config(objective: str, arg: str):
  """(config, dataset, flags) with everything but the method's own hyper-parameters set."""
  dataset, flags, teacher = parse(arg)
  if dataset not in DATASETS:
    raise ValueError(f"Unknown dataset {dataset!r} for configs/{objective}.py; expected one of {DATASETS}.")
  c = base.get_config(objective)
  if dataset == "toy2d":
    kind = "grid25_unequal" if "grid25" in flags else "ring8_unequal"
    c.data.update(name="toy2d", toy2d_kind=kind, batch_size=256, conditional=False)
    c.network.update(kind="mlp", mlp_hidden=256, mlp_depth=4, dropout=0.0)
    c.teacher.update(source="analytic", workdir=teacher or "")   # a teacher= here is an error at validation
    c.train.update(num_steps=3000, log_every=100, checkpoint_every=1000, sample_every=1000)
    c.eval.update(num_samples=4000, batch_size=4000)
  elif dataset == "digits":
    # The network of configs/edm.py:digits (the demo teacher's), so the students start from the teacher.
    c.data.update(name="digits", image_size=16, batch_size=64, conditional=True)
    c.network.update(edm_config.get_config("digits").network)
    c.teacher.update(source="workdir", workdir=teacher or DEFAULT_TEACHER)
    c.train.update(num_steps=2000, log_every=50, checkpoint_every=500, sample_every=500, num_grid_samples=100)
    c.eval.update(num_samples=1000, batch_size=100)
  elif dataset == "cifar10":
    c.data.update(name="tfds", tfds_name="cifar10", batch_size=256)
    use_teacher(c, TEACHERS["cifar10,uncond" if "uncond" in flags else "cifar10"], teacher or "")
    c.train.update(num_steps=500_000_000 // 256, log_every=100, checkpoint_every=5000, sample_every=5000,
                   eval_every=50_000)
    c.eval.update(num_samples=50_000, batch_size=500)
  elif dataset == "imagenet64":
    c.data.update(name="tfds", tfds_name="imagenet_resized/64x64", batch_size=8192)
    use_teacher(c, TEACHERS["imagenet64"], teacher or "")
    c.network.dropout = 0.1
    c.train.update(num_steps=1_000_000_000 // 8192, log_every=100, checkpoint_every=2000, sample_every=2000,
                   eval_every=10_000)
    c.eval.update(num_samples=50_000, batch_size=500)
  return c, dataset, flags


def finish(c, flags):
  """Applies `init=DIR` (after the method's settings, which may set the init mode) and `smoke` last (after the
  method's settings, which may set batch sizes and step counts)."""
  for flag in flags:
    if flag.startswith("init="):
      init_from(c, flag.split("=", 1)[1])
  if "smoke" in flags:
    base.smoke(c)
    if c.teacher.source in ("workdir", "converted"):  # a random teacher of config.network: none trained needed
      c.teacher.update(source="random", workdir="")
  return c


def get_config(arg: str = "digits"):
  c, dataset, flags = distillation_config("sid", arg)
  o = c.objective.sid
  if dataset == "toy2d":
    # weight_min: the per-sample normaliser mean|x_g - y_r| averages only 2 coordinates here and can come
    # arbitrarily close to 0 at small sigma; clipping it at 0.05 (not 1e-5) keeps those samples' weights bounded.
    # alpha 1.0 (the official AFHQ and SiDA value): with alpha 1.2 the loss has the term -0.2 ||y_r - y_f||^2,
    # which a generator can lower by running away from a lagging fake score; on the 5x5 grid that happened.
    o.update(alpha=1.0, sigma_init=2.5, weight_min=0.05)
    if from_network(flags):
      toy_long_recipe(c, o)
    else:
      # Twice the run: on the tuning mixtures family:2 and 3 the one-step SW fell 1.41x -> 0.82x and 1.70x ->
      # 1.16x and the widest thin axis 2.3x -> 1.7x and 3.2x -> 2.0x (family:6, where 6000 steps ran off the data,
      # passed); on the held-out mixtures the thin axis narrowed on four of five. At 24000 steps on family:6 it
      # ran away (b1 0), lost a mode (b1 0.9) or left its modes as wide (half the generator rate).
      c.train.num_steps = 2 * TOY_SCORE_STEPS
      # Generator lr 5e-4 (was 1e-4) with both rates decayed to 0 by a cosine over the run: 1e-4 left anisotropic
      # modes twice too wide after 3000 steps; 1e-3 sharpens more but drops a small far mode
      # (experiments/toy_collapse.md). A longer run: set decay_steps too. The generator's gradient is clipped to
      # norm 10 (as DMD's is): unclipped, one spike in the first 50 steps threw the samples off the data on
      # family:6 and the run went non-finite (the loss is unbounded below where the fake score has not followed);
      # clipped, later run-aways remain there for two of three training seeds (a halved generator rate stops them
      # but widens every mode; experiments/toy_family.md).
      toy_rates(o, c.train.num_steps, grad_clip_norm=10.0)
    o.ema.update(halflife_kimg=20.0)
  elif dataset == "digits":
    # The recipe measured in experiments/digits_score_distillation.md: lr 1e-4 for both networks decayed to 0 by a
    # cosine over the run (a constant rate stalled at FD 3.4-3.8), EMA half-life 20 kimg with ramp-up 0.25; at
    # 5000 steps the one-step student matched its teacher's Heun NFE 35. A shorter run: set decay_steps too.
    o.update(alpha=1.2, sigma_init=2.5)
    c.train.num_steps = 5000
    for opt in (o.generator_optimizer, o.fake_score_optimizer):
      opt.update(lr=1e-4, decay_steps=c.train.num_steps)
    o.ema.update(halflife_kimg=20.0, rampup_ratio=0.25)
  elif dataset == "cifar10":
    o.update(alpha=1.2, sigma_init=2.5, t_max=800)
    o.generator_optimizer.update(lr=1e-5, b1=0.0)
    o.fake_score_optimizer.update(lr=1e-5, b1=0.0)
    o.ema.update(halflife_kimg=500.0, rampup_ratio=0.05)
  elif dataset == "imagenet64":
    o.update(alpha=1.2, sigma_init=2.5, t_max=800)
    o.generator_optimizer.update(lr=4e-6, b1=0.0)
    o.fake_score_optimizer.update(lr=4e-6, b1=0.0)
    o.ema.update(halflife_kimg=2000.0, rampup_ratio=0.05)
  return finish(c, flags)


def set_digits_steps(config, num_steps: int):
  """The digits preset's run length, and its settings for a run shorter than the preset's (`make demo`'s 200
  steps). The recipe (lr 1e-4 decayed to 0 over 5000 steps, EMA ramp-up 0.25) is for a full run; over 200 steps
  a constant lr 2e-5 with EMA half-life 10 kimg and ramp-up 0.05 ends better: digits FD 6.25 +- 0.39 against
  7.04 +- 0.60 for the recipe decayed over 200 steps (three draws of 1000 samples; experiments/digits_demo.md)."""
  o = config.objective.sid
  optimizers = (o.generator_optimizer, o.fake_score_optimizer)
  if num_steps < config.train.num_steps:
    for opt in optimizers:
      opt.update(lr=2e-5, decay_steps=0)
    o.ema.update(halflife_kimg=10.0, rampup_ratio=0.05)
  else:   # the recipe, its decay stretched over the longer run
    for opt in optimizers:
      opt.decay_steps = num_steps
  config.train.num_steps = num_steps
