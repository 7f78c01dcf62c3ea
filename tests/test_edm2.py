"""EDM2's magnitude-preserving UNet (gendistill/nets/edm2.py) against the official NVlabs/edm2 network.

The fixture (scripts/make_edm2_fixture.py) holds inputs and the official Precond's outputs for weights drawn by
`edm2.random_state_dict(config, seed)`; these tests redraw the same weights, convert them and compare.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gendistill import nets
from gendistill.data import DataSpec
from gendistill.nets import denoiser as denoiser_lib
from gendistill.nets import edm2

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "edm2_tiny.npz")


@pytest.fixture(scope="module")
def fixture():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def _case(fixture, name):
  config = json.loads(str(fixture[f"{name}/config"]))
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
  net = denoiser_lib.Denoiser(backbone=edm2.EDM2(**config), preconditioning="edm", sigma_data=0.5)
  variables = edm2.from_torch_state_dict(edm2.random_state_dict(config, int(fixture["seed"])), config)
  return config, net, variables


@pytest.mark.parametrize("name", ["cond", "uncond"])
def test_matches_official_network(fixture, name):
  """D(x; sigma) with labels, without labels, and the log-variance, at sigmas 0.002..80: max abs error < 1e-4."""
  config, net, variables = _case(fixture, name)
  x, sigma = jnp.asarray(fixture[f"{name}/x"]), jnp.asarray(fixture[f"{name}/sigma"])
  assert float(sigma.min()) == pytest.approx(0.002) and float(sigma.max()) == pytest.approx(80.0)
  labels = fixture.get(f"{name}/labels")
  apply = jax.jit(net.apply)
  d = apply(variables, x, sigma, None if labels is None else jnp.asarray(labels))
  np.testing.assert_allclose(d, fixture[f"{name}/D_labels"], rtol=0, atol=1e-4)
  c_skip = 0.25 / (sigma**2 + 0.25)
  assert np.abs(fixture[f"{name}/D_labels"] - c_skip[:, None, None, None] * x).max() > 0.1  # F matters
  if labels is not None:
    assert config["label_dim"] > 0
    d_none = apply(variables, x, sigma, None)
    np.testing.assert_allclose(d_none, fixture[f"{name}/D_none"], rtol=0, atol=1e-4)
    # Zero labels are the unconditional input of our contract, as None is EDM2's.
    np.testing.assert_allclose(apply(variables, x, sigma, jnp.zeros_like(labels)), d_none, rtol=0, atol=1e-6)
    assert np.abs(d - d_none).max() > 1e-3  # the labels matter
  logvar = edm2.logvar_fn(net)(variables, sigma)
  np.testing.assert_allclose(logvar, fixture[f"{name}/logvar"], rtol=0, atol=1e-4)


def test_weight_normalisation_per_output_channel(fixture):
  """Rescaling each output channel of a stored weight leaves D unchanged (up to EDM2's eps = 1e-4 in the norm);
  rescaling its input channels does change D. So the normalisation is over the right axes, at forward time."""
  _, net, variables = _case(fixture, "cond")
  name = ("params", "backbone", "unet", "enc", "4x4_block0", "conv_res0", "weight")
  x, sigma = jnp.asarray(fixture["cond/x"]), jnp.asarray(fixture["cond/sigma"])
  labels = jnp.asarray(fixture["cond/labels"])
  apply = jax.jit(net.apply)
  ref = apply(variables, x, sigma, labels)

  def with_weight(fn):
    v = jax.tree_util.tree_map(lambda a: a, variables)
    node = v
    for key in name[:-1]:
      node = node[key]
    node[name[-1]] = fn(node[name[-1]])
    return apply(v, x, sigma, labels)

  w = variables
  for key in name:
    w = w[key]
  rng = np.random.default_rng(0)
  per_out = rng.uniform(0.2, 5.0, size=w.shape[-1]).astype(np.float32)
  per_in = rng.uniform(0.2, 5.0, size=w.shape[-2]).astype(np.float32)
  np.testing.assert_allclose(with_weight(lambda a: a * per_out), ref, rtol=0, atol=1e-4)
  np.testing.assert_allclose(with_weight(lambda a: a * 1000.0), ref, rtol=0, atol=1e-4)
  assert np.abs(with_weight(lambda a: a * per_in[:, None]) - ref).max() > 1e-2


def test_forced_weight_normalization(fixture):
  """The projection makes every stored MPConv weight unit-RMS per output channel and keeps D (eps aside)."""
  _, net, variables = _case(fixture, "cond")
  projected = edm2.forced_weight_normalization(variables)
  w = projected["params"]["backbone"]["unet"]["dec"]["8x8_block1"]["conv_res0"]["weight"]
  rms = np.sqrt(np.mean(np.square(np.asarray(w)), axis=(0, 1, 2)))
  np.testing.assert_allclose(rms, 1.0, atol=1e-3)
  gain = projected["params"]["backbone"]["unet"]["out_gain"]
  assert float(gain) == float(variables["params"]["backbone"]["unet"]["out_gain"])  # gains untouched
  x, sigma = jnp.asarray(fixture["cond/x"]), jnp.asarray(fixture["cond/sigma"])
  apply = jax.jit(net.apply)
  np.testing.assert_allclose(apply(projected, x, sigma, None), apply(variables, x, sigma, None), rtol=0, atol=1e-3)


def test_state_dict_round_trip_and_tree(fixture):
  """official -> ours -> official is the identity; ours has exactly the tree a fresh init has."""
  config, net, variables = _case(fixture, "cond")
  state_dict = edm2.random_state_dict(config, 3)
  back = edm2.to_torch_state_dict(edm2.from_torch_state_dict(state_dict, config))
  assert sorted(back) == sorted(state_dict)
  for k, v in state_dict.items():
    assert back[k].shape == v.shape, k  # 0-d gains stay 0-d
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  r, c = config["img_resolution"], config["img_channels"]
  init = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, r, r, c)), jnp.ones((1,)),
                                         jnp.zeros((1, config["label_dim"]))))
  assert jax.tree.structure(init) == jax.tree.structure(variables)
  assert [a.shape for a in jax.tree.leaves(init)] == [a.shape for a in jax.tree.leaves(variables)]
  # Layouts: OIHW -> HWIO for convolutions, [out, in] -> [in, out] for linear layers.
  key = "unet.enc.8x8_conv.weight"
  assert state_dict[key].shape == (8, 4, 3, 3)
  converted = edm2.from_torch_state_dict(state_dict, config)
  np.testing.assert_array_equal(converted["params"]["backbone"]["unet"]["enc"]["8x8_conv"]["weight"],
                                state_dict[key].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(converted["params"]["backbone"]["logvar_linear"]["weight"],
                                state_dict["logvar_linear.weight"].T)
  assert converted["buffers"]["backbone"]["unet"]["emb_fourier"]["freqs"].shape == (8,)


def test_bad_state_dicts_name_the_keys(fixture):
  config, _, _ = _case(fixture, "cond")
  good = edm2.random_state_dict(config, 0)
  missing = {k: v for k, v in good.items() if k != "unet.dec.4x4_in0.attn_qkv.weight"}
  with pytest.raises(ValueError, match=r"missing keys \['unet.dec.4x4_in0.attn_qkv.weight'\]"):
    edm2.from_torch_state_dict(missing, config)
  with pytest.raises(ValueError, match=r"unexpected keys \['unet.enc.8x8_block0.bias'\]"):
    edm2.from_torch_state_dict({**good, "unet.enc.8x8_block0.bias": np.zeros(8, np.float32)}, config)
  bad = dict(good)
  bad["unet.emb_label.weight"] = np.zeros((16, 10), np.float32)
  with pytest.raises(ValueError, match=r"unet.emb_label.weight: expected \(16, 4\), got \(16, 10\)"):
    edm2.from_torch_state_dict(bad, config)
  # A different architecture: the wrong model_channels is caught, naming the keys.
  with pytest.raises(ValueError, match="mis-shaped keys"):
    edm2.from_torch_state_dict(good, dict(config, model_channels=16))
  with pytest.raises(ValueError, match="Unsupported EDM2 Precond arguments"):
    edm2.config_from_official(dict(img_resolution=8, img_channels=3, label_dim=0, embedding_type="fourier"))


def test_official_constructor_arguments_to_a_network_section(fixture):
  """What a converter does with a published pickle: Precond kwargs -> network section + spec -> nets.build_denoiser
  -> the weights -> the official outputs."""
  config, _, _ = _case(fixture, "uncond")
  kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
  arch = edm2.architecture_from_official(dict(kwargs, use_fp16=True, sigma_data=0.5))
  assert arch["shape"] == (8, 8, 2) and arch["num_classes"] == 0
  cfg = ml_collections.ConfigDict(dict(arch["network"], dtype="float32", remat="none", label_dropout=0.0))
  spec = DataSpec(key="image", shape=arch["shape"], num_classes=arch["num_classes"])
  assert edm2.fields_from_config(cfg, spec) == dict(edm2.DEFAULTS, **edm2.config_from_official(kwargs),
                                                     label_dropout=0.0)
  net = nets.build_denoiser(cfg, spec)
  variables = edm2.from_torch_state_dict(edm2.random_state_dict(config, int(fixture["seed"])),
                                         edm2.fields_from_config(cfg, spec))
  d = jax.jit(net.apply)(variables, jnp.asarray(fixture["uncond/x"]), jnp.asarray(fixture["uncond/sigma"]), None)
  np.testing.assert_allclose(d, fixture["uncond/D_labels"], rtol=0, atol=1e-4)
  with pytest.raises(ValueError, match="sigma_data"):
    edm2.architecture_from_official(dict(kwargs, sigma_data=1.0))


def test_build_by_kind_train_mode_and_remat():
  """network.kind='edm2' builds through nets.build_denoiser; dropout acts in train mode; remat keeps values."""
  cfg = ml_collections.ConfigDict(dict(
      kind="edm2", preconditioning="edm", sigma_data=0.5, model_channels=8, channel_mult=(1, 2), num_blocks=1,
      attn_resolutions=(4,), channels_per_head=8, logvar_channels=8, dropout=0.5, label_dropout=0.0,
      dtype="float32", remat="none"))
  spec = DataSpec(key="image", shape=(8, 8, 3), num_classes=4)
  net = nets.build_denoiser(cfg, spec)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  sigma, labels = jnp.array([0.5, 3.0]), jax.nn.one_hot(jnp.array([1, 2]), 4)
  assert set(jax.eval_shape(net.init, jax.random.key(0), x, sigma, labels)) == {"params", "buffers"}
  fields = edm2.fields_from_config(cfg, spec)
  variables = edm2.from_torch_state_dict(edm2.random_state_dict(fields, 0), fields)
  eval_out = jax.jit(net.apply)(variables, x, sigma, labels)
  # Train mode (dropout): a different output; gradients reach the weights and gains, not the Fourier buffers.
  def loss(v):
    d = net.apply(v, x, sigma, labels, train=True, rngs={"dropout": jax.random.key(2)})
    return jnp.sum(d**2), d
  grads, train_out = jax.jit(jax.grad(loss, has_aux=True))(variables)
  assert np.abs(train_out - eval_out).max() > 1e-3
  assert float(jnp.abs(grads["params"]["backbone"]["unet"]["out_gain"])) > 0
  assert float(jnp.abs(grads["params"]["backbone"]["unet"]["enc"]["4x4_block0"]["emb_gain"])) > 0
  assert not np.any(grads["buffers"]["backbone"]["unet"]["emb_fourier"]["freqs"])
  cfg.remat = "full"
  remat_net = nets.build_denoiser(cfg, spec)
  np.testing.assert_allclose(jax.jit(remat_net.apply)(variables, x, sigma, labels), eval_out, rtol=0, atol=1e-6)
  cfg.preconditioning = "vp"
  with pytest.raises(ValueError, match="preconditioning='edm'"):
    nets.build_denoiser(cfg, spec)
