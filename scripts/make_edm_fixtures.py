"""Reference outputs of the official NVlabs/edm networks, for tests/test_edm_teachers.py (and published-size
checks). Runs the official code (never copied here) in a Python with torch:

  python scripts/make_edm_fixtures.py --edm /path/to/NVlabs/edm [--out tests/fixtures/edm]
  python scripts/make_edm_fixtures.py --edm /path/to/NVlabs/edm --published --out /tmp/edm_published

Each case builds the official network (EDMPrecond / VPPrecond / VEPrecond around SongUNet or DhariwalUNet, the
architecture from gendistill/convert/presets.py), loads the seeded weights of
gendistill.convert.testing.fixture_state_dict (so a fixture stores only inputs and outputs), and saves
<case>.npz: out_cond (with labels), out_uncond (labels None), NCHW, for the inputs of
gendistill.convert.testing.fixture_inputs (one image per sigma in 0.002 .. 80). Also writes (tiny mode):
  edm_format_tiny.pkl   a network pickle in the published format (dict(ema=..., loss_fn=..., ...) made by
                        pickling the official network with its persistence wrapper), whose embedded module
                        source has one extra line: it creates the file named by $GENDISTILL_TRAP when run.
                        This script checks that a plain pickle.load does run it.
  edm_format_tiny.npz   its reference outputs, and `heun` samples of the official `edm_sampler`
                        (generate.py; 18 steps = NFE 35) from fixed latents.
  torch_save_{zip,legacy}.pt  a small state dict in torch.save's two formats (strided views, shared storage).
Compare ours with: python scripts/check_edm_equivalence.py DIR (needs jax, not torch).
"""
import argparse
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gendistill.convert import testing  # noqa: E402  pylint: disable=g-import-not-at-top
from gendistill.convert import presets as teacher_presets  # noqa: E402  pylint: disable=g-import-not-at-top

TINY = {
    "ddpmpp_edm": ("tiny-ddpmpp", "EDMPrecond"),
    "ncsnpp_edm": ("tiny-ncsnpp", "EDMPrecond"),
    "adm_edm": ("tiny-adm", "EDMPrecond"),
    "ddpmpp_vp": ("tiny-ddpmpp", "VPPrecond"),
    "ncsnpp_ve": ("tiny-ncsnpp", "VEPrecond"),
}
PUBLISHED = {
    "cifar10_cond_ddpmpp_edm": ("edm-cifar10-32x32-cond-vp", "EDMPrecond"),
    "cifar10_cond_ncsnpp_edm": ("edm-cifar10-32x32-cond-ve", "EDMPrecond"),
    "imagenet64_cond_adm_edm": ("edm-imagenet-64x64-cond-adm", "EDMPrecond"),
}
# The pickle fixture: a micro conditional DDPM++ (KBs).
MICRO = dict(img_resolution=8, img_channels=3, label_dim=2, model_type="SongUNet", model_channels=4,
             channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0, augment_dim=0,
             embedding_type="positional", channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
             resample_filter=[1, 1])
TRAP = ("\nimport os as _gendistill_os\nif _gendistill_os.environ.get('GENDISTILL_TRAP'):\n"
        "    open(_gendistill_os.environ['GENDISTILL_TRAP'], 'w').write('embedded code ran')\n")
SEED = 2024


def model_kwargs(preset):
  t = teacher_presets.get(preset)
  net = t["network"]
  keys = ["model_channels", "channel_mult", "num_blocks", "attn_resolutions", "channel_mult_emb", "augment_dim",
          "dropout", "label_dropout"]
  if net["kind"] == "unet":
    keys += ["embedding_type", "channel_mult_noise", "encoder_type", "resample_filter"]
  kw = {k: list(net[k]) if isinstance(net[k], tuple) else net[k] for k in keys}
  kw["model_type"] = "SongUNet" if net["kind"] == "unet" else "DhariwalUNet"
  h, _, c = t["shape"]
  return dict(img_resolution=h, img_channels=c, label_dim=t["num_classes"], **kw), t


def seeded(net, seed):
  import torch  # pylint: disable=g-import-not-at-top
  sd = net.state_dict()
  weights = testing.fixture_state_dict({k: tuple(v.shape) for k, v in sd.items()}, seed)
  net.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v for k, v in sd.items()}, strict=True)
  return net.eval().requires_grad_(False)


def outputs(net, shape, num_classes):
  import torch  # pylint: disable=g-import-not-at-top
  x, sigma, labels = testing.fixture_inputs(shape, num_classes)
  with torch.no_grad():
    out_cond = net(torch.from_numpy(x), torch.from_numpy(sigma),
                   None if labels is None else torch.from_numpy(labels)).numpy()
    out_uncond = net(torch.from_numpy(x), torch.from_numpy(sigma), None).numpy()
  # x, sigma and labels are testing.fixture_inputs(shape, num_classes): not stored.
  return dict(out_cond=out_cond, out_uncond=out_uncond)


def make_case(networks, name, preset, precond, out_dir):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  kw, t = model_kwargs(preset)
  net = seeded(getattr(networks, precond)(**kw), SEED)
  res = outputs(net, t["shape"], t["num_classes"])
  path = os.path.join(out_dir, f"{name}.npz")
  np.savez_compressed(path, preset=preset, precond=precond, seed=SEED, **res)
  print(f"{name}: {sum(v.numel() for v in net.state_dict().values())} values, output std "
        f"{res['out_cond'].std():.3f} -> {path}")


def make_pickle(edm_dir, networks, out_dir):
  import torch  # pylint: disable=g-import-not-at-top
  import dnnlib  # pylint: disable=g-import-not-at-top
  from training import loss as loss_lib  # pylint: disable=g-import-not-at-top
  from generate import edm_sampler  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = seeded(networks.EDMPrecond(**MICRO), SEED)
  trapped = None
  for module in net.modules():  # one source object for all classes, so the pickle stores it once
    cls = type(module)
    if hasattr(cls, "_orig_module_src"):
      trapped = trapped or cls._orig_module_src + TRAP
      cls._orig_module_src = trapped
  data = dict(ema=net, loss_fn=loss_lib.EDMLoss(), augment_pipe=None,
              dataset_kwargs=dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", resolution=8))
  pkl = os.path.join(out_dir, "edm_format_tiny.pkl")
  with open(pkl, "wb") as f:
    pickle.dump(data, f)
  # The trap is live: a plain pickle.load (with the official code importable) runs the embedded code.
  with tempfile.TemporaryDirectory() as tmp:
    trap = os.path.join(tmp, "ran")
    code = f"import pickle, sys; sys.path.insert(0, {edm_dir!r}); pickle.load(open({pkl!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, GENDISTILL_TRAP=trap))
    assert os.path.exists(trap), "the embedded trap did not fire on a plain pickle.load"
  shape, num_classes = (MICRO["img_resolution"],) * 2 + (MICRO["img_channels"],), MICRO["label_dim"]
  res = outputs(net, shape, num_classes)
  latents = np.random.Generator(np.random.PCG64(7)).standard_normal((4, 3, 8, 8)).astype(np.float32)
  heun_labels = np.eye(num_classes, dtype=np.float32)[[0, 1, 0, 1]]
  with torch.no_grad():
    heun = edm_sampler(net, torch.from_numpy(latents), torch.from_numpy(heun_labels), num_steps=18)
  np.savez_compressed(os.path.join(out_dir, "edm_format_tiny.npz"), latents=latents, heun_labels=heun_labels,
                      heun=heun.to(torch.float32).numpy(), **res)
  print(f"edm_format_tiny.pkl: {os.path.getsize(pkl)} bytes; trap verified; heun std {heun.std():.3f}")


def small_torch_save_files(out_dir):
  """torch_save_{zip,legacy}.pt: what testing.small_state_dict() holds, written by torch.save in both formats
  (a transposed view and a slice of a shared storage exercise strides and offsets)."""
  import torch  # pylint: disable=g-import-not-at-top
  base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
  sd = {"a.weight": base, "a.bias": base[1, 1:3], "b.weight": base.t(), "c": torch.arange(3, dtype=torch.int64),
        "h": torch.tensor([0.5, -2.0], dtype=torch.float16)}
  for ext, zip_format in (("zip", True), ("legacy", False)):
    torch.save(sd, os.path.join(out_dir, f"torch_save_{ext}.pt"), _use_new_zipfile_serialization=zip_format)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--edm", required=True, help="a checkout of github.com/NVlabs/edm")
  parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "edm"))
  parser.add_argument("--published", action="store_true", help="published-size networks (not for the repo)")
  args = parser.parse_args()
  sys.path.insert(0, os.path.abspath(args.edm))
  os.chdir(os.path.abspath(args.edm))  # generate.py and the persistence wrapper import from the checkout
  from training import networks  # pylint: disable=g-import-not-at-top
  os.makedirs(args.out, exist_ok=True)
  for name, (preset, precond) in (PUBLISHED if args.published else TINY).items():
    make_case(networks, name, preset, precond, args.out)
  if not args.published:
    make_pickle(os.path.abspath(args.edm), networks, args.out)
    small_torch_save_files(args.out)


if __name__ == "__main__":
  main()
