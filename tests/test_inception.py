"""The Flax FID Inception against pytorch-fid's (torch, CPU) on seeded random weights, without torch.

tests/fixtures/inception_fixture.npz comes from scripts/make_inception_fixture.py (torch + pytorch-fid): the
seed, a few uint8 images, the reference pool features and logits for both input pipelines (pytorch-fid and
NVIDIA's detector), a strided sample of the preprocessed inputs, and two tiny torch.save files. Here the weights
are rebuilt from the seed with numpy, the Flax network runs, and everything is compared to 1e-4.
The last test repeats the comparison live when torch and pytorch_fid are importable (skipped otherwise).
"""
import importlib.util
import io
import os
import pickle
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendistill.evaluation import inception as gi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "inception_fixture.npz")
TOL = dict(rtol=1e-4, atol=1e-4)  # features are O(1): |pool| <= ~6, |logits| <= ~5


@pytest.fixture(scope="module")
def fx():
  with np.load(FIXTURE) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def params(fx):
  return gi.params_from_state_dict(gi.random_state_dict(int(fx["seed"])))


def test_param_names_and_shapes_are_pytorch_fids():
  shapes = gi.param_shapes()
  assert len(shapes) == 472 and sum(int(np.prod(s)) for s in shapes.values()) == 23_885_392
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
  assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
  assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)


def test_random_weights_are_deterministic_and_order_free(fx, params):
  seed = int(fx["seed"])
  again = gi.params_from_state_dict(gi.random_state_dict(seed))
  jax.tree.map(np.testing.assert_array_equal, again, params)
  # Per-tensor streams: a tensor's value depends on (seed, name) only, not on the order of generation.
  for s in (seed, seed + 1):
    rs = np.random.RandomState([s, zlib.crc32(b"fc.bias")])
    expected = (0.1 * rs.standard_normal((1008,))).astype(np.float32)
    assert np.array_equal(params["fc"]["bias"], expected) == (s == seed)


@pytest.mark.parametrize("mode", gi.PREPROCESSING)
@pytest.mark.parametrize("name", ["a", "b"])
def test_preprocessing_matches_reference(fx, mode, name):
  pre = np.asarray(jax.jit(lambda x: gi.preprocess(x, mode))(fx[f"images_{name}"]))
  assert pre.shape == (len(fx[f"images_{name}"]), 299, 299, 3)
  s = int(fx["pre_stride"])
  # NVIDIA's reference builds its sampling grid with affine_grid in float32: weights differ by ~1e-5 there.
  np.testing.assert_allclose(pre[:, ::s, ::s], fx[f"pre_{name}_{mode}"], rtol=0,
                             atol=1e-6 if mode == "pytorch_fid" else 1e-4)


def test_preprocessing_identity_at_299_and_grayscale():
  img = np.random.RandomState(0).randint(0, 256, (1, 299, 299, 1)).astype(np.uint8)
  out = np.asarray(gi.preprocess(jnp.asarray(img)))
  np.testing.assert_allclose(out, np.repeat(img / 127.5 - 1, 3, axis=-1), atol=1e-6)
  nv = np.asarray(gi.preprocess(jnp.asarray(img), "nvidia"))
  np.testing.assert_allclose(nv, np.repeat((img - 128.0) / 128, 3, axis=-1), atol=1e-7)
  with pytest.raises(TypeError):
    gi.preprocess(jnp.zeros((1, 8, 8, 3)))


def test_quantize_is_edms():
  x = np.array([-1.5, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 2.0], np.float32)
  expected = np.clip(x * 127.5 + 128, 0, 255).astype(np.uint8)  # EDM: (x * 127.5 + 128).clip(0, 255).to(uint8)
  np.testing.assert_array_equal(gi.quantize(x), expected)
  np.testing.assert_array_equal(np.asarray(gi.quantize(jnp.asarray(x))), expected)
  assert list(expected[[1, 3, 6]]) == [0, 128, 255]


def test_network_matches_pytorch_fid(fx, params):
  """Both pipelines and both image sizes through one compiled forward pass (uint8 in, features out)."""
  net = gi.FIDInceptionV3()

  @jax.jit
  def run(p, a, b):
    x = jnp.concatenate([gi.preprocess(img, mode) for mode in gi.PREPROCESSING for img in (a, b)])
    return net.apply({"params": p}, x)

  pool, logits = jax.tree.map(np.asarray, run(params, fx["images_a"], fx["images_b"]))
  keys = [f"{name}_{mode}" for mode in gi.PREPROCESSING for name in "ab"]
  ref_pool = np.concatenate([fx[f"pool_{k}"] for k in keys])
  ref_logits = np.concatenate([fx[f"logits_{k}"] for k in keys])
  assert pool.shape == (6, 2048) and logits.shape == (6, 1008)
  assert 0.3 < ref_pool.std() < 3  # the seeded weights keep activations O(1)
  np.testing.assert_allclose(pool, ref_pool, **TOL)
  np.testing.assert_allclose(logits, ref_logits, **TOL)


def test_extractor_quantizes_batches_pads_and_drops_the_logit_bias(fx, params):
  ext = gi.InceptionFeatures(params)
  imgs = np.concatenate([fx["images_a"], fx["images_a"][:1]])  # 3 images, batch 2: the last batch is padded
  # Generated images in [-1, 1] are quantised as EDM first: these floats quantise back to the fixture's uint8.
  as_float = (imgs.astype(np.float32) - 127.5) / 127.5
  assert np.array_equal(gi.quantize(as_float), imgs)
  out = ext.features(as_float, batch_size=2)
  ref_pool = np.concatenate([fx["pool_a_pytorch_fid"], fx["pool_a_pytorch_fid"][:1]])
  ref_logits = np.concatenate([fx["logits_a_pytorch_fid"], fx["logits_a_pytorch_fid"][:1]])
  np.testing.assert_allclose(out["pool"], ref_pool, **TOL)
  np.testing.assert_allclose(out["logits"], ref_logits - params["fc"]["bias"], **TOL)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_free_reader(fx, tmp_path, fmt):
  path = tmp_path / f"tiny_{fmt}.pth"
  path.write_bytes(fx[f"pth_{fmt}"].tobytes())
  sd = gi.read_state_dict(str(path))
  expected = {k[3:]: v for k, v in fx.items() if k.startswith("sd/")}
  assert set(sd) == set(expected)
  for k, v in expected.items():
    assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
    np.testing.assert_array_equal(sd[k], v, err_msg=k)


def test_npz_roundtrip_and_load_params(params, tmp_path, monkeypatch):
  path = str(tmp_path / "inception.npz")
  gi.save_params_npz(params, path)
  loaded = gi.load_params(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  monkeypatch.setenv(gi.WEIGHTS_ENV, path)
  assert gi.default_weights_path() == path
  monkeypatch.delenv(gi.WEIGHTS_ENV)
  with pytest.raises(FileNotFoundError, match="never downloads"):
    gi.load_params(None)


def test_reader_rejects_what_it_cannot_read(tmp_path):
  ts = tmp_path / "detector.pt"  # TorchScript archive layout (NVIDIA's detector)
  with zipfile.ZipFile(ts, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({}))
    zf.writestr("archive/constants.pkl", pickle.dumps(()))
    zf.writestr("archive/code/__torch__/x.py", "")
  with pytest.raises(NotImplementedError, match="TorchScript"):
    gi.read_state_dict(str(ts))
  pk = tmp_path / "module.pkl"  # a pickle that would run code: refused, not executed
  pk.write_bytes(pickle.dumps(io.BytesIO(b"x")))
  with pytest.raises(ValueError, match="not a torch.save file"):
    gi.read_state_dict(str(pk))
  bad = {k: np.zeros(s, np.float32) for k, s in list(gi.param_shapes().items())[:-1]}
  with pytest.raises(ValueError, match="missing"):
    gi.params_from_state_dict(bad)


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("torch") and importlib.util.find_spec("pytorch_fid")),
                    reason="needs torch and pytorch_fid (the optional torch extra)")
def test_live_against_pytorch_fid(tmp_path):
  """Same check on fresh weights and images, plus the full-size state dict written by torch.save."""
  import torch
  spec = importlib.util.spec_from_file_location("make_fixture", os.path.join(ROOT, "scripts",
                                                                             "make_inception_fixture.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  state_dict = gi.random_state_dict(11)
  wrapper, raw, full = script.build_reference(state_dict)
  for zip_format in (True, False):  # as pytorch-fid's file: a state dict of the whole fid_inception_v3()
    path = tmp_path / f"pt_inception_{zip_format}.pth"
    torch.save(full.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    params = gi.load_params(str(path))  # read back without torch
    jax.tree.map(np.testing.assert_array_equal, params, gi.params_from_state_dict(state_dict))
  images = np.random.RandomState(5).randint(0, 256, (2, 40, 28, 3)).astype(np.uint8)
  for mode in gi.PREPROCESSING:
    ref_pool, ref_logits, _ = script.run(wrapper, raw, full, images, mode)
    out = gi.InceptionFeatures(params, preprocessing=mode)(images)
    np.testing.assert_allclose(np.asarray(out["pool"]), ref_pool, **TOL)
    np.testing.assert_allclose(np.asarray(out["logits"]), ref_logits - state_dict["fc.bias"], **TOL)
