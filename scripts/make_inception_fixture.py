"""Write tests/fixtures/inception_fixture.npz: pytorch-fid's Inception (torch, CPU) on seeded random weights.

The weights come from `gendistill.evaluation.inception.random_state_dict(seed)` (numpy only, per-tensor seeded),
are loaded into pytorch-fid's own `InceptionV3` / `fid_inception_v3()` (its download is replaced by these
weights, loaded strictly), and a few small uint8 images are run through it:
  * the pytorch-fid pipeline: x / 255 -> F.interpolate(299, bilinear, align_corners=False) -> 2x - 1 -> net;
  * NVIDIA's detector pipeline (as its TorchScript code does it): float(x) -> affine_grid/grid_sample(border)
    -> (x - 128) / 128 -> the same net.
The fixture keeps the seed, the images, pool features, logits (with the fc bias) and a strided sample of the
preprocessed inputs; plus two tiny state dicts written by torch.save (zip and legacy formats) with the arrays
they hold, to test the torch-free reader. tests/test_inception.py rebuilds the weights from the seed and checks
the Flax network against it without torch.

Needs torch, torchvision, pytorch-fid, and jax/flax (for the shared weight builder), e.g. in a separate venv:
  python3 -m venv /tmp/torchref
  /tmp/torchref/bin/pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid numpy scipy jax==0.10.2 flax==0.12.8
  /tmp/torchref/bin/python scripts/make_inception_fixture.py [--seed 0] [--out tests/fixtures/inception_fixture.npz]
"""
import argparse
import importlib.util
import io
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_inception_module():
  """gendistill/evaluation/inception.py by path: it needs numpy, jax and flax only, not the package's other deps."""
  spec = importlib.util.spec_from_file_location(
      "_gendistill_inception", os.path.join(ROOT, "gendistill", "evaluation", "inception.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # flax's dataclasses look their module up
  spec.loader.exec_module(module)
  return module


gi = _load_inception_module()  # the numpy weight builder (jax only for the parameter shapes)

PRE_STRIDE = 7  # keep every 7th row/column of the preprocessed 299x299 inputs


def build_reference(state_dict):
  """pytorch-fid's modules with `state_dict` loaded strictly, never downloading."""
  import pytorch_fid.inception as pfi
  tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  calls = []

  def no_download(url, *args, **kwargs):  # replaces pytorch-fid's load_state_dict_from_url
    calls.append(url)
    return dict(tensors)

  pfi.load_state_dict_from_url = no_download
  wrapper = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # resize + normalise inside
  raw = pfi.InceptionV3([3], resize_input=False, normalize_input=False).eval()  # for NVIDIA's preprocessing
  full = pfi.fid_inception_v3().eval()  # the whole network, for fc
  assert len(calls) == 3 and all(c == pfi.FID_WEIGHTS_URL for c in calls)
  return wrapper, raw, full


def nvidia_preprocess(images_u8):
  """NVIDIA's TorchScript detector's input code: grid_sample resize to 299 with a TF1 grid, (x - 128) / 128."""
  x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).to(torch.float32)
  n, c, h, w = x.shape
  theta = torch.eye(2, 3)
  theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
  theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
  theta = theta.unsqueeze(0).repeat([n, 1, 1])
  grid = F.affine_grid(theta, [n, c, 299, 299], False)
  x = F.grid_sample(x, grid, "bilinear", "border", False)
  return (x - 128) / 128


def pytorch_fid_preprocess(images_u8):
  x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).to(torch.float32) / 255  # torchvision ToTensor
  x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # InceptionV3.forward
  return 2 * x - 1


def run(wrapper, raw, full, images_u8, preprocessing):
  with torch.no_grad():
    if preprocessing == "pytorch_fid":
      x01 = torch.from_numpy(images_u8).permute(0, 3, 1, 2).to(torch.float32) / 255
      pool = wrapper(x01)[0].flatten(1)
      pre = pytorch_fid_preprocess(images_u8)
      assert torch.equal(raw(pre)[0].flatten(1), pool), "wrapper and explicit preprocessing disagree"
    else:
      pre = nvidia_preprocess(images_u8)
      pool = raw(pre)[0].flatten(1)
    logits = full.fc(pool)
    check = full.avgpool(full.Mixed_7c(full.Mixed_7b(full.Mixed_7a(_trunk(full, pre))))).flatten(1)
    assert torch.allclose(check, pool, rtol=0, atol=0), "fid_inception_v3 and InceptionV3 disagree"
  pre_nhwc = pre.permute(0, 2, 3, 1)[:, ::PRE_STRIDE, ::PRE_STRIDE, :]
  return pool.numpy(), logits.numpy(), pre_nhwc.numpy()


def _trunk(m, x):
  for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
               "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
               "Mixed_6e"]:
    x = getattr(m, name)(x)
  return x


def tiny_state_dicts():
  """Small torch.save files (zip, legacy) covering dtypes, views with offsets, non-contiguous strides."""
  g = torch.Generator().manual_seed(1)
  base = torch.randn(6, 5, generator=g)
  sd = {
      "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
      "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
      "double": torch.randn(5, generator=g, dtype=torch.float64),
      "half": torch.randn(2, 3, generator=g).half(),
      "transposed": base.t(),  # non-contiguous strides
      "row_view": base[2],  # shares base's storage, with an offset
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 4),
      "ints": torch.arange(6, dtype=torch.int32).reshape(2, 3),
      "param": torch.nn.Parameter(torch.randn(3, generator=g)),
  }
  out = {}
  for fmt, zip_format in (("zip", True), ("legacy", False)):
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=zip_format)
    out[f"pth_{fmt}"] = np.frombuffer(buf.getvalue(), np.uint8)
  for k, v in sd.items():
    out[f"sd/{k}"] = v.detach().numpy().copy()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "inception_fixture.npz"))
  args = parser.parse_args()
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  import pytorch_fid
  import torchvision

  state_dict = gi.random_state_dict(args.seed)
  wrapper, raw, full = build_reference(state_dict)
  rs = np.random.RandomState(args.seed + 1)
  images = {
      "a": rs.randint(0, 256, (2, 32, 32, 3)).astype(np.uint8),  # CIFAR-sized: upsampling
      "b": rs.randint(0, 256, (1, 24, 320, 3)).astype(np.uint8),  # wider than 299: downsampling in W
  }
  fixture = {"seed": np.int64(args.seed), "pre_stride": np.int64(PRE_STRIDE),
             "versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                                  f"pytorch-fid {pytorch_fid.__version__}")}
  for name, imgs in images.items():
    fixture[f"images_{name}"] = imgs
    for mode in ("pytorch_fid", "nvidia"):
      pool, logits, pre = run(wrapper, raw, full, imgs, mode)
      fixture[f"pool_{name}_{mode}"] = pool.astype(np.float32)
      fixture[f"logits_{name}_{mode}"] = logits.astype(np.float32)
      fixture[f"pre_{name}_{mode}"] = pre.astype(np.float32)
      print(f"{name} {mode}: pool mean {pool.mean():.4f} std {pool.std():.4f} max {pool.max():.4f}; "
            f"logits std {logits.std():.4f}")
  fixture.update(tiny_state_dicts())
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **fixture)
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")


if __name__ == "__main__":
  main()
