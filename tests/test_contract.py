"""The objective contract: objectives receive their networks (a user's Flax module or a closed-form function,
no monkeypatching), and the teacher is an argument of the compiled step, never a baked-in constant."""
import ast
import glob
import importlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill import data as data_lib
from gendistill import objectives
from gendistill import teachers
from gendistill.diffusion import losses
from gendistill.evaluation.toy_metrics import sliced_wasserstein
from gendistill.nets import Network
from gendistill.objectives.base import example_batch

# Objectives whose train_step reads the teacher, and those whose step does not (trained from data; ECT starts
# from the teacher's parameters in init).
WITH_TEACHER = ("sid", "sida", "diff_instruct", "dmd", "dmd2", "fdistill", "cd", "progressive", "add", "sim", "scd")
WITHOUT_TEACHER = ("edm", "ign", "adversarial", "ct", "ict", "ect", "sct", "meanflow")


def test_every_objective_is_classified():
  assert sorted(WITH_TEACHER + WITHOUT_TEACHER) == objectives.names()


def _setup(name):
  config = importlib.import_module(f"configs.{name}").get_config("toy2d,smoke")
  dataset = data_lib.build(config.data)
  teacher = teachers.build(config.teacher, dataset, config.network)
  objective = objectives.build(config, dataset.spec)
  state = jax.jit(objective.init)(jax.random.key(0), example_batch(dataset.spec), teacher)
  return objective, teacher, state, next(dataset.iterator())


def _num_parameters(lowered) -> int:
  """The number of parameters of the lowered program's entry function (unused arguments are pruned)."""
  main = next(line for line in lowered.as_text().splitlines() if "func.func public @main(" in line)
  return main.split(") ->")[0].count("%arg")


@pytest.mark.parametrize("name", WITH_TEACHER)
def test_the_teacher_is_an_argument_of_the_compiled_step(name):
  """One compiled program, two teachers with different values: different results. A teacher baked into the
  program as a constant could not change them; its parameters are inputs of the lowered HLO."""
  objective, teacher, state, batch = _setup(name)
  assert teacher is not None
  lowered = jax.jit(objective.train_step).lower(state, batch, teacher)
  baked = jax.jit(lambda s, b: objective.train_step(s, b, teacher)).lower(state, batch)
  assert _num_parameters(lowered) == _num_parameters(baked) + len(jax.tree.leaves(teacher))
  compiled = lowered.compile()
  other = teacher.replace(params=jax.tree.map(lambda p: p + 0.3 * jnp.ones_like(p), teacher.params))
  out_a = compiled(state, batch, teacher)
  out_b = compiled(state, batch, other)   # (state, metrics): SiDA's generator only computes its loss at first
  differs = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), (out_a[0].params, out_a[1]), (out_b[0].params, out_b[1]))
  assert any(jax.tree.leaves(differs)), f"{name}: the teacher's values do not reach the compiled step"


def test_ect_starts_from_the_teacher_but_its_step_does_not_read_it():
  objective, teacher, state, batch = _setup("ect")
  assert teacher is not None
  lowered = jax.jit(objective.train_step).lower(state, batch, teacher)
  baked = jax.jit(lambda s, b: objective.train_step(s, b, teacher)).lower(state, batch)
  assert _num_parameters(lowered) == _num_parameters(baked)


class UserDenoiser(nn.Module):
  """A user's own network (not from gendistill.nets): EDM-preconditioned two-layer MLP for 2-D points."""
  width: int = 64

  @nn.compact
  def __call__(self, x, sigma, labels=None, train=False):
    del labels, train
    s = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])[:, None]
    c_in = 1 / jnp.sqrt(s**2 + 0.25)
    h = jnp.concatenate([c_in * x, jnp.log(s) / 4], axis=1)
    h = nn.silu(nn.Dense(self.width)(h))
    h = nn.silu(nn.Dense(self.width)(h))
    out = nn.Dense(x.shape[1])(h)
    return 0.25 / (s**2 + 0.25) * x + 0.5 * s * c_in * out


def test_custom_loop_trains_sid_with_a_user_generator_and_takes_a_closed_form_network():
  dataset = data_lib.build(dict(name="toy2d", toy2d_kind="ring8", toy2d_size=4096, image_size=0, tfds_name="",
                                tfds_split="train", tfds_data_dir="", batch_size=256, seed=0, conditional=False))
  m = dataset.mixture
  teacher = teachers.gaussian_mixture(m.weights, m.means, m.covs)
  cfg = objectives.default_config("sid")
  cfg.update(alpha=1.0, weight_min=0.05)
  cfg.generator_optimizer.update(lr=1e-3)
  cfg.fake_score_optimizer.update(lr=1e-3)
  cfg.ema.update(halflife_kimg=0.0, decay=0.0)      # sample the generator itself
  network = Network.from_module(UserDenoiser())
  objective = objectives.make("sid", {"generator": network, "fake_score": network}, dataset.spec,
                              objectives.RunFacts(batch_size=256, num_steps=400), cfg)
  state = objective.init(jax.random.key(0), example_batch(dataset.spec), teacher)
  step = jax.jit(objective.train_step)
  sample = jax.jit(objective.sample, static_argnums=2)
  reference = dataset.reference(2000)["x"]
  before = sliced_wasserstein(np.asarray(sample(state, jax.random.key(1), 2000)), reference)
  it = dataset.iterator()
  for _ in range(400):
    state, metrics = step(state, next(it), teacher)
  after = sliced_wasserstein(np.asarray(sample(state, jax.random.key(1), 2000)), reference)
  assert np.isfinite(metrics["generator/loss"])
  assert after < 0.5 * before, (before, after)

  # A closed-form network in a loss function: for data N(0, s^2 I) with s = sigma_data the exact denoiser
  # D(y) = s^2 / (s^2 + sigma^2) y has EDM loss lambda(sigma) E||D - x||^2 = dim at every sigma.
  exact = lambda params, y, sigma, labels=None, train=False, rngs=None: (
      0.25 / (0.25 + sigma[:, None] ** 2) * y)
  x = 0.5 * jax.random.normal(jax.random.key(2), (200_000, 2))
  loss, _ = losses.edm_loss(exact, None, x, None, jax.random.key(3), sigma_data=0.5)
  np.testing.assert_allclose(loss, 2.0, rtol=0.02)
  wrong = lambda params, y, sigma, labels=None, train=False, rngs=None: 1.2 * exact(params, y, sigma)
  assert float(losses.edm_loss(wrong, None, x, None, jax.random.key(3), sigma_data=0.5)[0]) > 2.05


@pytest.mark.parametrize("mode", ["fresh", "batch"])
def test_sid_generator_half_step_draws_fresh_labels(mode):
  """The official loop reads a new batch for each half-step: the generator's labels are a new draw, not the
  fake score's batch labels (generator_labels='batch' keeps the older behaviour). The teacher, called only in
  the generator half-step, records the labels it sees."""
  seen = []

  def teacher_apply(params, x, sigma, labels=None, train=False, rngs=None):
    jax.debug.callback(lambda l: seen.append(np.asarray(l)), labels)
    return params["scale"] * x

  spec = data_lib.DataSpec("x", (2,), 3)
  teacher = teachers.Teacher(params={"scale": jnp.float32(0.5)}, apply_fn=teacher_apply, num_classes=3)
  cfg = objectives.default_config("sid")
  cfg.generator_labels = mode
  network = Network.from_module(UserDenoiser(width=8))
  objective = objectives.make("sid", {"generator": network, "fake_score": network}, spec,
                              objectives.RunFacts(batch_size=64, num_steps=1), cfg)
  state = objective.init(jax.random.key(0), example_batch(spec), teacher)
  batch = {"x": np.zeros((64, 2), np.float32), "label": np.zeros((64,), np.int32)}   # every label is class 0
  jax.block_until_ready(jax.jit(objective.train_step)(state, batch, teacher))
  classes = set(np.argmax(np.concatenate(seen), axis=1).tolist())
  assert classes == ({0, 1, 2} if mode == "fresh" else {0})


def _sources(*packages):
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gendistill")
  for package in packages:
    for path in sorted(glob.glob(os.path.join(root, package, "**", "*.py"), recursive=True)):
      with open(path) as f:
        yield os.path.relpath(path, root), f.read()


def test_objectives_neither_build_networks_nor_read_the_run_config():
  """In code (not prose): no objective module reads config.network/data/train/sampler or uses a network builder.
  The registry (`__init__`) and the contract (`base`, RunFacts.from_config) are where a run's config is read."""
  builders = {"build_denoiser", "build_backbone", "build_networks", "build_critic", "BottleneckHead", "MLPCritic",
              "ConvCritic", "UNet", "MLP"}
  offenders = []
  for path, text in _sources("objectives"):
    if os.path.basename(path) in ("__init__.py", "base.py"):
      continue
    for node in ast.walk(ast.parse(text)):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "config"
          and node.attr in ("network", "data", "train", "sampler")):
        offenders.append((path, node.lineno, f"config.{node.attr}"))
      name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
      if name in builders:
        offenders.append((path, node.lineno, name))
      if isinstance(node, ast.ImportFrom) and node.module == "gendistill.nets":
        offenders += [(path, node.lineno, a.name) for a in node.names if a.name in ("unet", "mlp")]
  assert not offenders, offenders


def test_core_packages_import_at_module_top():
  """No imports inside functions (they held an import cycle together): the cycle is gone."""
  offenders = []
  for path, text in _sources("objectives", "nets", "sharding", "teachers", "diffusion"):
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.Lambda)):
        offenders += [(path, n.lineno) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
  assert not offenders, offenders
