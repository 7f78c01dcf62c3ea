"""Published EDM/ADM teachers: safe loading, conversion, equivalence with the official code, export.

Reference outputs come from the official NVlabs/edm networks (scripts/make_edm_fixtures.py) with the seeded
weights of gendistill.convert.testing; the fixtures hold only inputs and outputs (plus one tiny network pickle
in the published format whose embedded code would create a file).
"""
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill import convert
from gendistill.convert import __main__ as convert_cli
from gendistill.convert import mapping, safe_load, testing
from gendistill.diffusion import samplers

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "edm")
PKL = os.path.join(FIXTURES, "edm_format_tiny.pkl")
CASES = ["ddpmpp_edm", "ncsnpp_edm", "adm_edm", "ddpmpp_vp", "ncsnpp_ve"]


def _fixture(name):
  with np.load(os.path.join(FIXTURES, name), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case", CASES)
def test_matches_official_network(case):
  errors = testing.fixture_errors(os.path.join(FIXTURES, f"{case}.npz"))
  if case.endswith("_edm"):  # |D| ~ 1 at every sigma
    assert errors["cond"] < 1e-4 and errors["uncond"] < 1e-4, errors
  else:  # VP/VE: D = x -/+ sigma F; measured 5e-4 at sigma 80 (1.6e-6 relative), F's scale is the criterion
    assert errors["cond_per_sigma"] < 1e-4 and errors["uncond_per_sigma"] < 1e-4, errors


def _tiny_state_dict(tmp_path, preset="tiny-ddpmpp"):
  """A converted tiny teacher's weights as an EDM state dict (.npz) and the teacher directory."""
  _, variables = testing.our_network(preset, "EDMPrecond", seed=3)
  arch = convert.presets.get(preset)
  state = mapping.flax_to_torch(jax.tree.map(np.asarray, variables),
                                resample_filter=tuple(arch["network"]["resample_filter"]))
  path = str(tmp_path / f"{preset}.npz")
  np.savez(path, **state)
  return path, state


def test_pickle_converts_without_running_embedded_code(tmp_path, monkeypatch):
  with open(PKL, "rb") as f:
    raw = f.read()
  assert b"GENDISTILL_TRAP" in raw and b"_reconstruct_persistent_obj" in raw  # the trap is in the file
  trap = tmp_path / "embedded_code_ran"
  monkeypatch.setenv("GENDISTILL_TRAP", str(trap))
  out = str(tmp_path / "teacher")
  info = convert.convert(PKL, out)
  assert not trap.exists()
  assert info["network"]["kind"] == "unet" and info["spec"]["num_classes"] == 2
  teacher = convert.load_teacher(out)
  ref = _fixture("edm_format_tiny.npz")
  x, sigma, labels = testing.fixture_inputs((8, 8, 3), 2)
  x = jnp.asarray(x.transpose(0, 2, 3, 1))
  for labels, key in ((jnp.asarray(labels), "out_cond"), (None, "out_uncond")):
    ours = np.asarray(teacher(x, sigma, labels)).transpose(0, 3, 1, 2)
    assert np.abs(ours - ref[key]).max() < 1e-4


def test_heun_nfe35_matches_official_edm_sampler(tmp_path):
  out = str(tmp_path / "teacher")
  convert.convert(PKL, out)
  teacher = convert.load_teacher(out)
  ref = _fixture("edm_format_tiny.npz")
  noise = jnp.asarray(ref["latents"].transpose(0, 2, 3, 1))
  fn = teacher.denoise_fn(jnp.asarray(ref["heun_labels"]))
  ours = np.asarray(samplers.heun_sampler(fn, noise, num_steps=18)).transpose(0, 3, 1, 2)
  assert samplers.heun_nfe(18) == 35
  err = np.abs(ours - ref["heun"]).max()
  assert err < 1e-4, err


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_torch_save_files_without_torch(fmt):
  state = safe_load.load_weights(os.path.join(FIXTURES, f"torch_save_{fmt}.pt")).state_dict
  expected = testing.small_state_dict()  # views with strides and offsets into one shared storage
  assert set(state) == set(expected)
  for k, v in expected.items():
    assert state[k].dtype == v.dtype and np.array_equal(state[k], v), k


def test_pickle_with_disallowed_global_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"ema": Evil()}))
  with pytest.raises(convert.UnsafePickleError, match=r"(posix|os|nt)\.system"):
    convert.convert(str(path), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  # Inside a torch.save zip as well.
  zpath = tmp_path / "evil.pt"
  with zipfile.ZipFile(zpath, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps(Evil()))
  with pytest.raises(convert.UnsafePickleError, match="system"):
    safe_load.load_weights(str(zpath))


def test_truncated_files_are_errors(tmp_path):
  src, state = _tiny_state_dict(tmp_path)
  from gendistill.convert import export  # pylint: disable=g-import-not-at-top
  files = {"pkl": PKL, "npz": src}
  export.save_state_dict(state, str(tmp_path / "w.pt"))
  export.save_state_dict(state, str(tmp_path / "w.safetensors"))
  files.update(pt=str(tmp_path / "w.pt"), safetensors=str(tmp_path / "w.safetensors"))
  for ext, path in files.items():
    with open(path, "rb") as f:
      raw = f.read()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(convert.WeightsFileError, match="truncated|corrupt"):
      convert.convert(str(cut), str(tmp_path / f"out_{ext}"), preset="tiny-ddpmpp" if ext != "pkl" else None)
    assert not (tmp_path / f"out_{ext}").exists()


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
  _, state = _tiny_state_dict(tmp_path)
  cases = {
      "missing": ({k: v for k, v in state.items() if k != "model.map_layer0.weight"}, "model.map_layer0.weight"),
      "extra": (dict(state, **{"model.extra.weight": np.zeros(3, np.float32)}), "model.extra.weight"),
      "shape": (dict(state, **{"model.map_layer1.bias": np.zeros(5, np.float32)}),
                r"model.map_layer1.bias: \(5,\), expected \(64,\)"),
      "filter": (dict(state, **{"model.enc.4x4_down.conv0.resample_filter": np.ones((1, 1, 2, 2), np.float32)}),
                 "4x4_down.conv0.resample_filter"),
  }
  for name, (sd, pattern) in cases.items():
    path = str(tmp_path / f"{name}.npz")
    np.savez(path, **sd)
    with pytest.raises(convert.ConversionError, match=pattern):
      convert.convert(path, str(tmp_path / f"out_{name}"), preset="tiny-ddpmpp")
    assert not (tmp_path / f"out_{name}").exists()


def test_wrong_architecture_is_an_error(tmp_path):
  src, _ = _tiny_state_dict(tmp_path, "tiny-ddpmpp")
  with pytest.raises(convert.ConversionError, match="missing keys"):
    convert.convert(src, str(tmp_path / "out"), preset="tiny-ncsnpp")
  with pytest.raises(convert.ConversionError, match="another architecture|differs"):
    convert.convert(PKL, str(tmp_path / "out2"), preset="tiny-adm")
  with pytest.raises(convert.ConversionError, match="--preset"):
    convert.convert(src, str(tmp_path / "out3"))
  assert not any((tmp_path / d).exists() for d in ("out", "out2", "out3"))


def test_export_round_trip_is_identity(tmp_path):
  # .safetensors carries the architecture (metadata): pickle -> teacher -> export -> convert.
  out = str(tmp_path / "teacher")
  convert.convert(PKL, out)
  network, spec, variables = convert.read_teacher(out)
  path = str(tmp_path / "gen.safetensors")
  convert.export_generator(variables, network, spec, path)
  convert.convert(path, str(tmp_path / "again"))
  _, _, round_trip = convert.read_teacher(str(tmp_path / "again"))
  assert jax.tree.structure(round_trip) == jax.tree.structure(variables)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(round_trip)))
  # .pt (torch.load(weights_only=True) format): the same keys and values as the pickle's own state dict,
  # so the official network loads it strictly.
  pt = str(tmp_path / "gen.pt")
  convert.export_generator(variables, network, spec, pt)
  original = safe_load.load_weights(PKL).state_dict
  exported = safe_load.load_weights(pt).state_dict
  assert set(original) == set(exported)
  assert all(np.array_equal(original[k], exported[k]) for k in original)
  # .pt of a preset architecture -> convert --preset -> identical variables.
  net_cfg = convert._network_config(convert.presets.get("tiny-ncsnpp")["network"])  # pylint: disable=protected-access
  spec = convert._spec(convert.presets.get("tiny-ncsnpp"))  # pylint: disable=protected-access
  _, variables = testing.our_network("tiny-ncsnpp", "EDMPrecond", seed=5)
  convert.export_generator(variables, net_cfg, spec, pt)
  convert.convert(pt, str(tmp_path / "again_pt"), preset="tiny-ncsnpp")
  _, _, round_trip = convert.read_teacher(str(tmp_path / "again_pt"))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(round_trip)))


def test_cli(tmp_path, capsys):
  assert convert_cli.main([PKL, str(tmp_path / "t")]) == 0
  assert "unet (edm preconditioning)" in capsys.readouterr().out
  assert convert_cli.main([str(tmp_path / "nothing.pkl"), str(tmp_path / "u")]) == 2
  assert "No weights file" in capsys.readouterr().err


def test_teacher_source_converted(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gendistill import teachers  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "teacher")
  convert.convert(PKL, out)
  cfg = ml_collections.ConfigDict(dict(source="converted", workdir=out, step=-1))
  teacher = teachers.build(cfg, dataset=None)
  assert teacher.num_classes == 2
  x, sigma, labels = testing.fixture_inputs((8, 8, 3), 2)
  ours = np.asarray(teacher(jnp.asarray(x.transpose(0, 2, 3, 1)), sigma, jnp.asarray(labels)))
  assert np.abs(ours.transpose(0, 3, 1, 2) - _fixture("edm_format_tiny.npz")["out_cond"]).max() < 1e-4
  with pytest.raises(ValueError, match="teacher.workdir"):
    teachers.build(ml_collections.ConfigDict(dict(source="converted", workdir="", step=-1)), dataset=None)
