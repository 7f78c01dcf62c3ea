"""Sharding: mesh and rules, 1-device vs 8-device parity of every objective's train step, FSDP memory, checkpoints
across meshes, gradient accumulation, the compute switches (bf16, remat), and the loop on a mesh.

The every-objective parity runs are marked `slow` except edm's (each objective compiles its step three times;
`pytest -m "not slow"` skips the others).
"""
import importlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import edm as edm_config
from gendistill import checkpoint as ckpt_lib
from gendistill import data as data_lib
from gendistill import nets
from gendistill import objectives
from gendistill import sharding
from gendistill import teachers
from gendistill import train
from gendistill.data import DataSpec
from gendistill.objectives import base
from gendistill.objectives.base import example_batch

MESHES = {"1": (1, 1), "data=8": (8, 1), "data=4,fsdp=2": (4, 2)}


def _mesh(data, fsdp):
  return sharding.make_mesh(devices=jax.devices()[:data * fsdp], data=data, fsdp=fsdp)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _state_arrays(state):
  return _host((state.params, state.ema, state.opt_state, state.extra, state.step))


def _assert_close(a, b, rtol=1e-5, atol=2e-6):
  """Elementwise closeness; the absolute floor grows with the array's scale (a sharded reduction sums in another
  order, and the error of an entry near 0 is set by the magnitude of the terms it is computed from)."""
  def check(x, y):
    scale = float(np.max(np.abs(y))) if np.size(y) and np.issubdtype(np.asarray(y).dtype, np.floating) else 0.0
    np.testing.assert_allclose(x, y, rtol=rtol, atol=max(atol, 1e-6 * scale))
  jax.tree.map(check, a, b)


# ------------------------------------------------------------------------------------------------------------
# Mesh and rules.


def test_mesh_from_config_fills_in_the_rest():
  cfg = sharding.mesh_config()
  assert dict(sharding.make_mesh(cfg).shape) == {"data": 8, "fsdp": 1}
  cfg.update(data=2, fsdp=-1)
  assert dict(sharding.make_mesh(cfg).shape) == {"data": 2, "fsdp": 4}
  assert all(t == jax.sharding.AxisType.Auto for t in sharding.make_mesh(cfg).axis_types)
  cfg.update(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh(cfg)
  cfg.update(data=3, fsdp=1)
  with pytest.raises(ValueError, match="3 x fsdp=1"):
    sharding.make_mesh(cfg)


def test_default_rule_shards_the_largest_divisible_dimension_of_large_arrays():
  assert sharding.fsdp_spec((3, 3, 256, 512), 8, min_size=1000) == P(None, None, None, "fsdp")
  assert sharding.fsdp_spec((3, 3, 512, 256), 8, min_size=1000) == P(None, None, "fsdp", None)
  assert sharding.fsdp_spec((256, 256), 8, min_size=1000) == P(None, "fsdp")        # tie: the last
  assert sharding.fsdp_spec((100, 36), 8, min_size=10) == P()                          # nothing divisible
  assert sharding.fsdp_spec((100, 36), 4, min_size=10) == P("fsdp", None)
  assert sharding.fsdp_spec((512,), 8, min_size=1000) == P()                           # small: replicated
  assert sharding.fsdp_spec((), 8, min_size=0) == P()
  assert sharding.fsdp_spec((4096, 64), 1) == P()                                      # no fsdp axis


def test_rules_match_params_optimizer_state_and_ema_alike():
  mesh = _mesh(2, 4)
  cfg = ml_collections.ConfigDict(dict(fsdp_min_size=16, rules=(
      ("backbone/layer1/kernel", ("fsdp", None)),
      ("out/", "replicated"),
      ("bias", "fsdp"))))
  spec = DataSpec("x", (2,), 0)
  config = edm_config.get_config("toy2d,smoke")
  objective = objectives.build(config, spec)
  sharded = sharding.ShardedObjective(objective, spec, mesh, None, cfg)
  specs = {sharding.path_str(p): s.spec
           for p, s in jax.tree_util.tree_flatten_with_path(sharded.state_shardings)[0]}
  layer1 = [k for k in specs if "backbone/layer1/kernel" in k]
  assert len(layer1) == 4, layer1          # params, Adam mu and nu, EMA
  assert {specs[k] for k in layer1} == {P("fsdp", None)}
  assert {specs[k] for k in specs if "backbone/out/" in k} == {P()}
  assert {specs[k] for k in specs if k.endswith("layer0/bias")} == {P("fsdp")}   # 'fsdp' ignores the threshold
  assert {specs[k] for k in specs if k.endswith("backbone/layer0/kernel")} == {P(None, "fsdp")}   # default rule
  assert {specs[k] for k in specs if k.endswith("map_layer1/bias")} == {P("fsdp")}
  assert specs["step"] == P() and specs["rng"] == P()
  with pytest.raises(ValueError, match="not divisible"):
    sharding.resolve_spec(("fsdp", None), (6, 4), mesh, "x")


def test_bad_batch_size_is_a_clear_error():
  with pytest.raises(ValueError, match="divisible by the number of batch shards"):
    sharding.put_batch({"x": np.zeros((6, 2), np.float32)}, _mesh(8, 1))


# ------------------------------------------------------------------------------------------------------------
# FSDP memory.


def _unet_setup(name, model_channels=128):
  """An objective on 16x16x1 class-conditional data with a UNet whose bytes are mostly in large arrays, and an
  abstract teacher of the same network (only shapes are needed)."""
  config = importlib.import_module(f"configs.{name}").get_config("digits,smoke")
  config.network.update(kind="unet", model_channels=model_channels, channel_mult=(1, 2), num_blocks=1,
                        attn_resolutions=(8,))
  spec = DataSpec("image", (16, 16, 1), 10)
  net = nets.build_denoiser(config.network, spec)
  x = example_batch(spec)
  params = jax.eval_shape(lambda: net.init(jax.random.key(0), x["image"], jnp.ones(2),
                                           jax.nn.one_hot(x["label"], 10)))

  def apply_fn(p, x, sigma, labels=None, train=False, rngs=None, **kw):
    return net.apply(p, x, sigma, labels, train=train, rngs=rngs, **kw)
  return config, spec, teachers.Teacher(params=params, apply_fn=apply_fn, num_classes=10)


@pytest.mark.parametrize("name", objectives.names())
def test_fsdp_state_is_an_eighth_of_replicated(name):
  config, spec, teacher = _unet_setup(name)
  objective = objectives.build(config, spec)
  replicated = sharding.ShardedObjective(objective, spec, _mesh(8, 1), teacher, config.mesh)
  fsdp = sharding.ShardedObjective(objective, spec, _mesh(1, 8), teacher, config.mesh)
  rep, shard = (s.memory()["state_bytes_per_device"] for s in (replicated, fsdp))
  assert rep == replicated.memory()["state_bytes_total"] > 100 * 2**20
  assert shard < rep / 8 * 1.15, (shard, rep)
  teacher_shard = sharding.bytes_per_device(sharding.with_shardings(teacher.params, fsdp.teacher_shardings.params))
  assert teacher_shard < sharding.total_bytes(teacher.params) / 8 * 1.15


def test_sharded_init_creates_only_shards():
  """The real arrays of an FSDP init hold what the abstract accounting says, the compiled init never needs the
  whole state on one device, and the values are those of an unsharded init."""
  config = edm_config.get_config("toy2d,smoke")
  config.network.update(mlp_hidden=512, mlp_depth=3)      # 1.1M parameters, 94% in 512 x 512 kernels
  spec = DataSpec("x", (2,), 0)
  objective = objectives.build(config, spec)
  mesh = _mesh(1, 8)
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objective, spec, mesh, None, config.mesh)
    key = sharding.put_replicated(np.asarray(jax.random.key_data(jax.random.key(0))), mesh)
    compiled = sharded._init.lower(key, None).compile()  # pylint: disable=protected-access
    state = compiled(key, None)
  per_device = {d: 0 for d in jax.devices()}
  for x in jax.tree.leaves(state):
    for s in x.addressable_shards:
      per_device[s.device] += 8 if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else s.data.nbytes
  total = sharded.memory()["state_bytes_total"]
  assert max(per_device.values()) == sharded.memory()["state_bytes_per_device"] < total / 8 * 1.3
  mem = compiled.memory_analysis()
  assert mem.output_size_in_bytes + mem.temp_size_in_bytes < total / 2, (mem, total)
  reference = jax.jit(objective.init)(jax.random.key(0), example_batch(spec))
  _assert_close(_host(state.params), _host(reference.params), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------------------
# Parity of every objective, and checkpoints across meshes.


def _optimizer_sections(section):
  for value in section.values():
    if isinstance(value, ml_collections.ConfigDict):
      if {"name", "lr", "eps"} <= set(value.keys()):
        yield value
      else:
        yield from _optimizer_sections(value)


def parity_config(name):
  """`configs/<name>.py:toy2d,smoke` with every array sharded, and Adam's eps at least 1e-5.

  Why the eps: Adam's first steps move a parameter by about lr * sign(gradient) however small the gradient, so
  a gradient component that is zero up to float rounding (e.g. a bias whose per-example gradients cancel) takes a
  step of random sign, and the rounding depends on the order of the sums, which sharding changes. With eps =
  1e-5 such components move by lr * g / eps instead; the rest of the update is Adam's.
  """
  config = importlib.import_module(f"configs.{name}").get_config("toy2d,smoke")
  config.mesh.fsdp_min_size = 0
  for opt in _optimizer_sections(config.objective[name]):
    opt.eps = max(opt.eps, 1e-5)
  return config


def run_steps(config, mesh, steps, state=None):
  """`steps` train steps of config's objective on `mesh` from a fresh init (or from `state`, resharded).

  Returns (final state on the mesh, the ShardedObjective, host metrics of each step, a copy of the initial state).
  """
  dataset = data_lib.build(config.data)
  spec = dataset.spec
  teacher = teachers.build(config.teacher, dataset, config.network)
  objective = objectives.build(config, spec)
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh)
    teacher = sharded.put_teacher(teacher)
    state = sharded.init(jax.random.key(config.seed), teacher) if state is None else sharded.put_state(state)
    init = jax.tree.map(lambda x: x.copy(), state)     # train_step donates the state
    iterator = dataset.iterator()
    metrics = []
    for _ in range(steps):
      state, m = sharded.train_step(state, sharded.put_batch(next(iterator)), teacher)
      metrics.append(_host(m))
  return state, sharded, metrics, init


# Objectives whose steps are also run under pure data parallelism (data=8); every objective runs under one
# device and under data=4 x fsdp=2, which has a data axis too (one compile fewer per objective in the suite).
PURE_DATA_PARITY = ("edm", "sid", "dmd2", "cd")


def _check_parity(name, tmp_path, steps=4):
  config = parity_config(name)
  ref_state, _, ref_metrics, ref_init = run_steps(config, _mesh(1, 1), steps)
  ref = _state_arrays(ref_state)
  # data=4 x fsdp=2 initialises on its mesh (jit of init with out_shardings); data=8 starts from that init,
  # resharded (saving an init compile per objective; test_sharded_init_creates_only_shards covers init).
  fsdp_state, sharded, fsdp_metrics, init = run_steps(config, _mesh(4, 2), steps)
  _assert_close(_state_arrays(init), _state_arrays(ref_init), rtol=1e-6, atol=1e-7)
  runs = [("data=4,fsdp=2", fsdp_state, fsdp_metrics)]
  if name in PURE_DATA_PARITY:
    data_state, _, data_metrics, _ = run_steps(config, _mesh(8, 1), steps, state=init)
    runs.append(("data=8", data_state, data_metrics))
  for label, state, metrics in runs:
    for step, (m, r) in enumerate(zip(metrics, ref_metrics)):
      assert m.keys() == r.keys()
      for k in r:
        np.testing.assert_allclose(m[k], r[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {label} step {step} {k}")
    _assert_close(_state_arrays(state), ref)

  # A checkpoint saved under data=4 x fsdp=2 restores under one device and under data=8, exactly.
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(fsdp_state.params)), "nothing sharded"
  saved = _state_arrays(fsdp_state)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / name), async_save=False)
  ckpt.save(steps, fsdp_state, {"pos": steps})
  for label in ("1", "data=8"):
    mesh = _mesh(*MESHES[label])
    target = sharding.ShardedObjective(sharded.objective, sharded.spec, mesh, sharded.teacher, config.mesh)
    restored, data_state, step = ckpt.restore(target.abstract_state)
    assert step == steps and data_state == {"pos": steps}
    for x, s in zip(jax.tree.leaves(restored), jax.tree.leaves(target.state_shardings)):
      assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    jax.tree.map(np.testing.assert_array_equal, _state_arrays(restored), saved)
  ckpt.close()


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "edm" else pytest.mark.slow)
                                  for n in objectives.names()])
def test_one_device_and_eight_devices_agree(name, tmp_path):
  _check_parity(name, tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Gradient accumulation.


def test_four_microbatches_give_the_full_batch_update(mesh="data=4,fsdp=2"):
  config = edm_config.get_config("toy2d,smoke")
  config.data.batch_size = 32          # 4 micro-batches of 8: one example per device and micro-batch
  config.mesh.fsdp_min_size = 0
  for opt in _optimizer_sections(config.objective.edm):
    opt.eps = 1e-5
  full, _, full_metrics, _ = run_steps(config, _mesh(*MESHES[mesh]), 3)
  config.train.microbatches = 4
  micro, _, micro_metrics, _ = run_steps(config, _mesh(*MESHES[mesh]), 3)
  for m, r in zip(micro_metrics, full_metrics):
    _assert_close(m, r)
  _assert_close(_state_arrays(micro), _state_arrays(full))


def test_accumulate_gradients_helper_matches_value_and_grad():
  w = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
  batch = {"x": jax.random.normal(jax.random.key(0), (12, 2)), "y": jnp.arange(12.0), "none": None}

  def loss_fn(params, b, rng, scale):
    del rng
    pred = b["x"] @ params["w"]
    return scale * jnp.mean((pred[:, 0] - b["y"]) ** 2 + pred[:, 1] ** 2), {"mean_y": jnp.mean(b["y"])}

  want = jax.value_and_grad(loss_fn, has_aux=True)(w, batch, None, 2.0)
  for k in (1, 3, 4):
    got = jax.jit(lambda p, b: sharding.accumulate_gradients(loss_fn, p, b, None, 2.0, num_microbatches=k,
                                                             has_aux=True))(w, batch)
    _assert_close(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.accumulate_gradients(loss_fn, w, batch, None, 2.0, num_microbatches=5, has_aux=True)


def test_microbatches_with_an_objective_that_does_not_accumulate_is_an_error():
  spec = DataSpec("x", (2,), 0)
  edm = objectives.build(edm_config.get_config("toy2d,smoke"), spec)

  def plain_step(state, batch, teacher=None):
    del batch, teacher
    return state.replace(step=state.step + 1), {}

  other = base.Objective(name="plain", init=edm.init, train_step=plain_step, sample=edm.sample,
                         export_role=edm.export_role, apply_fn=edm.apply_fn)
  mesh = _mesh(8, 1)
  sharding.check_accumulation(sharding.ShardedObjective(edm, spec, mesh), 4)
  with pytest.raises(ValueError, match="does not accumulate gradients"):
    sharding.check_accumulation(sharding.ShardedObjective(other, spec, mesh), 4)


# ------------------------------------------------------------------------------------------------------------
# Compute switches.


def test_bfloat16_compute_keeps_float32_parameters():
  config = edm_config.get_config("toy2d,smoke")
  ref, _, ref_metrics, _ = run_steps(config, _mesh(8, 1), 2)
  config.network.dtype = "bfloat16"
  state, sharded, metrics, _ = run_steps(config, _mesh(8, 1), 2)
  dtypes = {np.dtype(x.dtype) for x in jax.tree.leaves((state.params, state.ema, state.opt_state))}
  assert dtypes <= {np.dtype("float32"), np.dtype("int32")}, dtypes
  net = nets.build_denoiser(config.network, sharded.spec)
  jaxpr = str(jax.make_jaxpr(lambda p: net.apply(p, jnp.ones((4, 2)), jnp.ones(4)))(_host(state.params)["denoiser"]))
  assert "bf16" in jaxpr
  for m, r in zip(metrics, ref_metrics):
    np.testing.assert_allclose(m["denoiser/loss"], r["denoiser/loss"], rtol=3e-2)


def test_remat_changes_memory_not_results():
  config = edm_config.get_config("toy2d,smoke")
  ref, _, ref_metrics, _ = run_steps(config, _mesh(8, 1), 2)
  for policy in ("full", "dots"):
    config.network.remat = policy
    state, _, metrics, _ = run_steps(config, _mesh(8, 1), 2)
    _assert_close(metrics, ref_metrics, rtol=1e-6, atol=1e-7)
    _assert_close(_state_arrays(state), _state_arrays(ref), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------------------
# The loop on a mesh.


def test_loop_resumes_under_another_mesh(tmp_path):
  config = edm_config.get_config("toy2d,smoke")
  config.train.update(num_steps=2, checkpoint_every=2)
  config.mesh.update(data=4, fsdp=2, fsdp_min_size=0)
  train.train_and_evaluate(config, str(tmp_path / "split"))
  config.train.num_steps = 4
  config.mesh.update(data=8, fsdp=1)
  resumed = train.train_and_evaluate(config, str(tmp_path / "split"))
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert int(resumed.step) == 4
  _assert_close(_state_arrays(resumed), _state_arrays(straight))
  rows = [r for r in train.read_metrics(str(tmp_path / "split")) if "denoiser/loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert os.path.exists(tmp_path / "split" / "samples")
