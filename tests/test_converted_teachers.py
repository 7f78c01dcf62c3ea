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
  name = "edm2-img64-s" if (module, dataset) == ("ect", "imagenet64") else (  # ECT's ImageNet run: EDM2-S
      sid_config.TEACHERS["cifar10,uncond" if uncond else dataset])
  arch = presets.get(name)
  # The network section is the teacher's architecture (dropout is a training choice of each preset).
  assert {k: config.network[k] for k in arch["network"] if k != "dropout"} == {
      k: v for k, v in arch["network"].items() if k != "dropout"}
  spec = DataSpec(key="image", shape=arch["shape"], num_classes=arch["num_classes"])
  teacher = teachers.abstract_for_run(config, spec)   # the run's teacher as shapes, with its real apply function
  _, converted = convert._abstract_variables(config.network, spec)  # pylint: disable=protected-access
  assert jax.tree.structure(teacher.params) == jax.tree.structure(converted)  # what load_teacher returns
  assert [a.shape for a in jax.tree.leaves(teacher.params)] == [a.shape for a in jax.tree.leaves(converted)]
  assert sum(np.prod(a.shape) for a in jax.tree.leaves(teacher.params)) > 50e6  # the published size
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objectives.build(config, spec), spec, mesh, teacher, config.mesh)
    lowered = sharded.lower_step(config.data.batch_size)
  assert jax.tree.leaves(lowered.out_info)


# ------------------------------------------------------------------------------------------------------------
# A pickle in the layout of EDM2's published files, made without torch or EDM2's code: stand-in classes and
# functions registered under the official module/class names, pickled by the standard pickler. It records what
# `pickle.dump(dnnlib.EasyDict(ema=Precond.to(float16), ...))` records: torch_utils.persistence objects whose
# metadata carries module source (here a trap that would create a file if run), tensors as
# torch._utils._rebuild_tensor_v2 over torch.storage._load_from_bytes(legacy torch.save of the storage).
# Checked once against the official code (NVlabs/edm2 on torch 2.x, outside the repository): a plain
# pickle.load of this file runs the trap; with the official module source in place of the trap it rebuilds a
# Precond/UNet whose state_dict() equals these weights (keys, float16 values, 0-d gains).

TRAP = ("import os\nif os.environ.get('GENDISTILL_TRAP'):\n"
        "    open(os.environ['GENDISTILL_TRAP'], 'w').write('embedded code ran')\n")


def _stand_in_modules(monkeypatch):
  import collections  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  mods = {}
  for name in ("torch", "torch._utils", "torch.storage", "torch.nn", "torch.nn.modules", "torch.nn.modules.container",
               "torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
    mods[name] = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, mods[name])

  def register(module, obj, name):
    obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
    setattr(mods[module], name, obj)
    return obj

  def never_called(*_):
    raise AssertionError("a stand-in was called while pickling")

  fns = {n: register(m, lambda *a: never_called(), n) for m, n in (
      ("torch_utils.persistence", "_reconstruct_persistent_obj"), ("torch._utils", "_rebuild_tensor_v2"),
      ("torch._utils", "_rebuild_parameter"), ("torch.storage", "_load_from_bytes"))}
  half = register("torch", type("HalfStorage", (), {}), "HalfStorage")
  single = register("torch", type("FloatStorage", (), {}), "FloatStorage")
  module_dict = register("torch.nn.modules.container", type("ModuleDict", (), {}), "ModuleDict")
  easy_dict = register("dnnlib.util", type("EasyDict", (dict,), {}), "EasyDict")

  def storage_bytes(arr):
    """torch.save(storage, _use_new_zipfile_serialization=False): the legacy format."""
    import io  # pylint: disable=g-import-not-at-top
    import pickle  # pylint: disable=g-import-not-at-top
    import struct  # pylint: disable=g-import-not-at-top
    out = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, dict(protocol_version=1001, little_endian=True,
                                                    type_sizes=dict(short=2, int=4, long=4))):
      pickle.dump(obj, out, protocol=2)
    storage_type = half if arr.dtype == np.float16 else single

    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        return ("storage", storage_type, "0", "cpu", arr.size, None) if obj is arr else None
    Pickler(out, protocol=2).dump(arr)
    pickle.dump(["0"], out, protocol=2)
    out.write(struct.pack("<q", arr.size) + np.ascontiguousarray(arr).tobytes())
    return out.getvalue()

  class Tensor:
    def __init__(self, arr, parameter):
      self.arr, self.parameter = np.asarray(arr, order="C"), parameter  # 0-d gains stay 0-d

    def __reduce__(self):
      storage = Storage(self.arr.reshape(-1))
      stride = tuple(s // self.arr.itemsize for s in self.arr.strides)
      tensor = (fns["_rebuild_tensor_v2"], (storage, 0, self.arr.shape, stride, False, collections.OrderedDict()))
      return (fns["_rebuild_parameter"], (Reduced(tensor), False, collections.OrderedDict())) if self.parameter \
          else tensor

  class Reduced:
    def __init__(self, reduced):
      self.reduced = reduced

    def __reduce__(self):
      return self.reduced

  class Storage:
    def __init__(self, arr):
      self.arr = arr

    def __reduce__(self):
      return (fns["_load_from_bytes"], (storage_bytes(self.arr),))

  class Persistent:
    def __init__(self, class_name, state):
      self.class_name, self.state = class_name, state

    def __reduce__(self):
      meta = dict(type="class", version=6, module_src=TRAP, class_name=self.class_name, state=self.state)
      return (fns["_reconstruct_persistent_obj"], (meta,))

  hooks = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
           "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
           "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")

  def module_state(params, buffers, modules, init_kwargs=None):
    """A torch.nn.Module's __dict__ as pickled (torch 2.x attribute names)."""
    return dict(training=False, _parameters=collections.OrderedDict(params), _buffers=collections.OrderedDict(
        buffers), _non_persistent_buffers_set=set(), _modules=collections.OrderedDict(modules),
                _is_full_backward_hook=None, **{h: collections.OrderedDict() for h in hooks},
                _init_args=(), _init_kwargs=dict(init_kwargs or {}))

  def network(class_name, state_dict, init_kwargs=None, prefix=""):
    """A persistent module tree with the flat `state_dict` below `prefix` (EDM2's class names)."""
    here = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    leaves = {k: v for k, v in here.items() if "." not in k}
    children = sorted({k.split(".")[0] for k in here if "." in k})
    params = {k: Tensor(v, True) for k, v in leaves.items() if k not in ("freqs", "phases")}
    buffers = {k: Tensor(v, False) for k, v in leaves.items() if k in ("freqs", "phases")}
    subs = {}
    for child in children:
      sub_keys = {k for k in here if k.startswith(child + ".")}
      if child in ("enc", "dec"):
        container = module_dict()
        container.__dict__.update(module_state({}, {}, {
            b: network("Block", state_dict, prefix=f"{prefix}{child}.{b}.")
            for b in sorted({k.split(".")[1] for k in sub_keys})}))
        subs[child] = container
      else:
        inner = {k.split(".", 1)[1] for k in sub_keys}
        name = ("UNet" if child == "unet" else "MPFourier" if inner <= {"freqs", "phases"} else "MPConv")
        subs[child] = network(name, state_dict, prefix=f"{prefix}{child}.")
    return Persistent(class_name, module_state(params, buffers, subs, init_kwargs))

  def published(kwargs, state_dict):
    data = easy_dict(
        ema=network("Precond", state_dict, dict(kwargs, use_fp16=True)),
        loss_fn=Persistent("EDM2Loss", module_state({}, {}, {}, dict(P_mean=-0.8, P_std=1.6, sigma_data=0.5))),
        encoder=Persistent("StandardRGBEncoder", module_state({}, {}, {})),
        dataset_kwargs=easy_dict(class_name="training.dataset.ImageFolderDataset", path="img64.zip"))
    import pickle  # pylint: disable=g-import-not-at-top
    return pickle.dumps(data, protocol=4)
  return published


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_edm2_format_pickle_converts_without_running_embedded_code(tmp_path, monkeypatch, ref, dtype):
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(str(ref["cond/config"])).items()}
  state = {k: v.astype(dtype) for k, v in _tiny_edm2_state_dict(ref).items()}
  raw = _stand_in_modules(monkeypatch)({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                                       state)
  monkeypatch.undo()  # the stand-in modules are gone: nothing below can import them
  assert b"_reconstruct_persistent_obj" in raw and b"GENDISTILL_TRAP" in raw and b"Precond" in raw
  path = tmp_path / "edm2-img64-tiny.pkl"
  path.write_bytes(raw)
  trap = tmp_path / "embedded_code_ran"
  monkeypatch.setenv("GENDISTILL_TRAP", str(trap))
  out = str(tmp_path / "teacher")
  info = convert.convert(str(path), out)
  assert not trap.exists()
  assert info["network"] == {**info["network"], **presets.get("tiny-edm2")["network"]}
  assert info["source"]["class_name"] == "Precond"
  _, _, variables = convert.read_teacher(out)
  back = edm2.to_torch_state_dict(variables)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v.astype(np.float32), err_msg=k)
  if dtype == "float32":
    teacher = _converted(out)
    x, sigma, labels = (jnp.asarray(ref[f"cond/{k}"]) for k in ("x", "sigma", "labels"))
    np.testing.assert_allclose(teacher(x, sigma, labels), ref["cond/D_labels"], rtol=0, atol=1e-4)
  # A preset that disagrees with what the pickle records is refused.
  with pytest.raises(convert.ConversionError, match="another architecture|differs"):
    convert.convert(str(path), str(tmp_path / "t2"), preset="edm2-img64-s")
