"""EDM2 files through the converter (state dicts, float16, export round trip) and distillation runs that start
from a converted teacher.

The EDM2 reference is tests/fixtures/edm2_tiny.npz (official NVlabs/edm2 outputs for the weights of
`edm2.random_state_dict(config, seed)`, see tests/test_edm2.py); here the same weights go through files and
`python -m gendistill.convert` instead of straight into the network.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gendistill import convert
from gendistill import teachers
from gendistill.convert import __main__ as convert_cli
from gendistill.convert import export, presets
from gendistill.nets import edm2

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "edm2_tiny.npz")


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def _tiny_edm2_state_dict(ref):
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(str(ref["cond/config"])).items()}
  # The fixture's conditional network is the tiny-edm2 preset.
  assert edm2.architecture_from_official(config) == presets.get("tiny-edm2")
  return edm2.random_state_dict(config, int(ref["seed"]))


def _converted(directory):
  cfg = ml_collections.ConfigDict(dict(source="converted", workdir=directory, step=-1))
  return teachers.build(cfg, dataset=None)


def _leaves_equal(a, b):
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_edm2_state_dict_converts_with_preset_and_matches_official(tmp_path, ref, ext):
  state = _tiny_edm2_state_dict(ref)
  src = str(tmp_path / f"edm2.{ext}")
  export.save_safetensors(state, src) if ext == "safetensors" else np.savez(src, **state)
  out = str(tmp_path / "teacher")
  assert convert_cli.main([src, out, "--preset", "tiny-edm2"]) == 0
  with open(os.path.join(out, "config.json")) as f:
    info = json.load(f)
  assert info["network"]["kind"] == "edm2" and info["spec"]["num_classes"] == 4
  teacher = _converted(out)
  x, sigma, labels = (jnp.asarray(ref[f"cond/{k}"]) for k in ("x", "sigma", "labels"))
  np.testing.assert_allclose(teacher(x, sigma, labels), ref["cond/D_labels"], rtol=0, atol=1e-4)
  np.testing.assert_allclose(teacher(x, sigma, None), ref["cond/D_none"], rtol=0, atol=1e-4)
  # The uncertainty head came along.
  network, spec, variables = convert.read_teacher(out)
  from gendistill import nets  # pylint: disable=g-import-not-at-top
  logvar = edm2.logvar_fn(nets.build_denoiser(network, spec))(jax.tree.map(jnp.asarray, variables), sigma)
  np.testing.assert_allclose(logvar, ref["cond/logvar"], rtol=0, atol=1e-4)


def test_edm2_float16_file_and_wrong_architecture(tmp_path, ref):
  """Published EDM2 files hold float16 weights: converted to float32 exactly. A state dict of another size, or
  the preset of another family, is an error naming keys, and nothing is written."""
  state = _tiny_edm2_state_dict(ref)
  half = {k: v.astype(np.float16) for k, v in state.items()}
  src = str(tmp_path / "half.npz")
  np.savez(src, **half)
  convert.convert(src, str(tmp_path / "t"), preset="tiny-edm2")
  _, _, variables = convert.read_teacher(str(tmp_path / "t"))
  back = edm2.to_torch_state_dict(variables)
  for k in half:
    assert back[k].dtype == np.float32 and back[k].shape == half[k].shape, k
    np.testing.assert_array_equal(back[k], half[k].astype(np.float32), err_msg=k)
  with pytest.raises(convert.ConversionError, match="missing keys"):
    convert.convert(src, str(tmp_path / "u"), preset="tiny-ddpmpp")
  bad = dict(state, **{"unet.out_gain": np.zeros((2,), np.float32)})
  np.savez(str(tmp_path / "bad.npz"), **bad)
  with pytest.raises(convert.ConversionError, match=r"unet.out_gain: expected \(\), got \(2,\)"):
    convert.convert(str(tmp_path / "bad.npz"), str(tmp_path / "v"), preset="tiny-edm2")
  assert not (tmp_path / "u").exists() and not (tmp_path / "v").exists()
  assert {"edm2-img64-s", "edm2-img64-xl", "edm-cifar10-32x32-cond-vp"} <= set(presets.names())


def test_edm2_export_convert_round_trip_is_identity(tmp_path, ref):
  state = _tiny_edm2_state_dict(ref)
  src = str(tmp_path / "edm2.safetensors")
  export.save_safetensors(state, src)
  convert.convert(src, str(tmp_path / "t"), preset="tiny-edm2")
  network, spec, variables = convert.read_teacher(str(tmp_path / "t"))
  # .safetensors carries the architecture: no --preset needed to read it back.
  path = str(tmp_path / "gen.safetensors")
  exported = convert.export_generator(variables, network, spec, path)
  assert set(exported) == set(state)  # EDM2 Precond.state_dict() names: loads strictly into the official network
  assert all(np.array_equal(exported[k], state[k]) for k in state)
  convert.convert(path, str(tmp_path / "again"))
  assert _leaves_equal(convert.read_teacher(str(tmp_path / "again"))[2], variables)
  pt = str(tmp_path / "gen.pt")
  convert.export_generator(variables, network, spec, pt)
  convert.convert(pt, str(tmp_path / "again_pt"), preset="tiny-edm2")
  assert _leaves_equal(convert.read_teacher(str(tmp_path / "again_pt"))[2], variables)


# ------------------------------------------------------------------------------------------------------------
# Distillation from a converted teacher.


def _converted_tiny_teacher(tmp_path, preset="tiny-ddpmpp"):
  """A tiny seeded EDM network (convert/testing.py) written as a state dict and converted with --preset."""
  from gendistill.convert import mapping, testing  # pylint: disable=g-import-not-at-top
  _, variables = testing.our_network(preset, "EDMPrecond", seed=11)
  state = mapping.flax_to_torch(jax.tree.map(np.asarray, variables),
                                resample_filter=tuple(presets.get(preset)["network"]["resample_filter"]))
  src = str(tmp_path / "weights.npz")
  np.savez(src, **state)
  out = str(tmp_path / "teacher")
  convert.convert(src, out, preset=preset)
  return out, variables


@pytest.mark.slow  # 322 s measured at load average 8.6 on 2 cores (compiles the SiD step, sampling, eval)
def test_sid_run_starts_from_a_converted_teacher(tmp_path):
  """configs/sid.py:cifar10,smoke with a converted tiny teacher (use_teacher, as the cifar10 preset does with the
  published file) and a tiny .npz image dataset: the generator and fake score start as copies of the teacher's
  parameters, and 2 training steps run through train.train_and_evaluate."""
  from configs import sid as sid_config  # pylint: disable=g-import-not-at-top
  from gendistill import data as data_lib  # pylint: disable=g-import-not-at-top
  from gendistill import objectives, train  # pylint: disable=g-import-not-at-top
  teacher_dir, variables = _converted_tiny_teacher(tmp_path)
  rng = np.random.default_rng(0)
  images = str(tmp_path / "images.npz")
  np.savez(images, images=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), labels=np.arange(32) % 4)
  c = sid_config.get_config("cifar10,smoke")
  assert c.teacher.source == "random"  # smoke without a converted teacher
  sid_config.use_teacher(c, "tiny-ddpmpp", teacher_dir)
  c.data.update(name="images", path=images)
  c.objective.sid.init = "teacher"  # copying is required: a mismatch would be an error, not a random init
  assert c.network.kind == "unet" and c.network.augment_dim == 9 and c.network.encoder_type == "standard"

  dataset = data_lib.build(c.data)
  assert dataset.spec.shape == (8, 8, 3) and dataset.spec.num_classes == 4
  teacher = teachers.build(c.teacher, dataset, c.network)
  assert _leaves_equal(jax.tree.map(np.asarray, teacher.params), jax.tree.map(np.asarray, variables))
  objective = objectives.build(c, dataset.spec)
  batch = jax.tree.map(jnp.asarray, next(dataset.iterator()))
  state = objective.init(jax.random.key(0), batch, teacher)
  for role in ("generator", "fake_score"):
    assert _leaves_equal(jax.tree.map(np.asarray, state.params[role]), jax.tree.map(np.asarray, teacher.params)), role

  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(c, workdir)
  assert int(final.step) == 2
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final.params["generator"]),
                                                      jax.tree.leaves(teacher.params))]
  assert any(moved)  # it trained
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["config"]["teacher"]["source"] == "converted"


def _abstract_teacher(config, spec):
  """The converted teacher of `config`'s network section as shapes (what load_teacher returns, without a file)."""
  net, abstract = convert._abstract_variables(config.network, spec)  # pylint: disable=protected-access

  def apply_fn(params, x, sigma, labels=None, train=False, rngs=None):
    return net.apply(params, x, sigma, labels, train=train, rngs=rngs)
  return teachers.Teacher(params=abstract, apply_fn=apply_fn, num_classes=spec.num_classes)


# Measured at load average ~8 on 2 cores: sid-cifar10 19 s, cd-cifar10 11 s, ect-imagenet64 12 s; the ADM
# distillation steps (sid 27 s, dmd2 43 s) are marked slow.
PAPER_PRESETS = [("sid", "cifar10"), ("cd", "cifar10"), ("ect", "imagenet64"),
                 pytest.param("sid", "imagenet64", marks=pytest.mark.slow),
                 pytest.param("dmd2", "imagenet64", marks=pytest.mark.slow)]


@pytest.mark.parametrize("module,dataset", PAPER_PRESETS)
def test_paper_preset_step_lowers_at_full_size(module, dataset):
  """The paper presets with their published teachers build, and their train step lowers from shapes alone at the
  full network size and global batch (jax.jit(...).lower on ShapeDtypeStructs; no compile, no weights)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from gendistill import objectives, sharding  # pylint: disable=g-import-not-at-top
  from gendistill.data import DataSpec  # pylint: disable=g-import-not-at-top
  from configs import sid as sid_config  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{module}").get_config(dataset)
  assert config.teacher.source == "converted"
  uncond = dataset == "cifar10" and not config.data.conditional  # the consistency presets' CIFAR-10
  arch = presets.get(sid_config.TEACHERS["cifar10,uncond" if uncond else dataset])
  # The network section is the teacher's architecture (dropout is a training choice of each preset).
  assert {k: config.network[k] for k in arch["network"] if k != "dropout"} == {
      k: v for k, v in arch["network"].items() if k != "dropout"}
  spec = DataSpec(key="image", shape=arch["shape"], num_classes=arch["num_classes"])
  teacher = _abstract_teacher(config, spec)
  assert sum(np.prod(a.shape) for a in jax.tree.leaves(teacher.params)) > 50e6  # the published size
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objectives.build(config, spec), spec, mesh, teacher, config.mesh)
    lowered = sharded.lower_step(config.data.batch_size)
  assert jax.tree.leaves(lowered.out_info)
