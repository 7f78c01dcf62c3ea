"""Reference outputs of the official EDM2 network (NVlabs/edm2 `training/networks_edm2.py`, `Precond`) for
tests/fixtures/edm2_tiny.npz, and the same comparison at a published size (printed, nothing written).

The official code is never copied: this script runs it where it is installed, in a subprocess of a Python that
has torch (this same file in `--official` mode, which imports only numpy, torch and the official repository).
Both sides use the weights of `gendistill.nets.edm2.random_state_dict(config, seed)` (a seeded numpy generator),
so the fixture stores only the configs, the seed, the inputs and the official outputs.

  # tiny fixtures (two configurations: conditional, and unconditional with non-default options)
  python scripts/make_edm2_fixture.py --official_root=PATH/TO/edm2 --torch_python=PATH/TO/python \
      --out=tests/fixtures/edm2_tiny.npz
  # a published size: prints the max abs errors of D and logvar against ours (float32, CPU)
  python scripts/make_edm2_fixture.py --official_root=PATH/TO/edm2 --torch_python=PATH/TO/python \
      --preset=edm2-img64-s --batch=7
Inputs: x = N(0, sigma^2 + 0.25) at sigmas from 0.002 to 80 (one per example), one-hot labels of random classes,
and the unconditional call (labels None, which EDM2 takes as zero labels).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SIGMAS = (0.002, 0.02, 0.2, 1.0, 5.0, 20.0, 80.0)
SEED = 0

# Conditional: the tiny preset (8x8x3, 4 classes). Unconditional: non-default options on a 3-level net.
CONFIGS = {
    "cond": "tiny",
    "uncond": dict(img_resolution=8, img_channels=2, label_dim=0, model_channels=4, channel_mult=(1, 2, 2),
                   channel_mult_noise=2, channel_mult_emb=3, num_blocks=2, attn_resolutions=(4, 2),
                   channels_per_head=4, res_balance=0.4, attn_balance=0.2, concat_balance=0.6, clip_act=1.0,
                   logvar_channels=6),
}


def _inputs(config, batch, seed):
  rng = np.random.default_rng(seed + 1)
  sigma = np.resize(np.asarray(SIGMAS, np.float32), batch).astype(np.float32)
  r, c = config["img_resolution"], config["img_channels"]
  x = (rng.standard_normal((batch, r, r, c)) * np.sqrt(sigma**2 + 0.25)[:, None, None, None]).astype(np.float32)
  labels = None
  if config.get("label_dim", 0):
    labels = np.eye(config["label_dim"], dtype=np.float32)[rng.integers(0, config["label_dim"], batch)]
  return x, sigma, labels


def run_official(official_root, torch_python, config, state_dict, x, sigma, labels):
  """The official Precond's (D(labels), D(None), logvar) on NHWC x, in a torch subprocess."""
  kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
            if k not in ("label_dropout", "dtype")}
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(os.path.join(tmp, "weights.npz"), **state_dict)
    inputs = dict(x=x, sigma=sigma) if labels is None else dict(x=x, sigma=sigma, labels=labels)
    np.savez(os.path.join(tmp, "inputs.npz"), **inputs)
    with open(os.path.join(tmp, "kwargs.json"), "w") as f:
      json.dump(kwargs, f)
    subprocess.run([torch_python, os.path.abspath(__file__), "--official", tmp, "--official_root", official_root],
                   check=True)
    with np.load(os.path.join(tmp, "outputs.npz")) as out:
      return {k: out[k] for k in out.files}


def _official_main(tmp, official_root):
  """Runs under the torch interpreter: imports only numpy, torch and the official repository."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, official_root)
  from training import networks_edm2  # pylint: disable=g-import-not-at-top
  with open(os.path.join(tmp, "kwargs.json")) as f:
    kwargs = json.load(f)
  torch.manual_seed(0)
  net = networks_edm2.Precond(use_fp16=False, **kwargs).eval()
  with np.load(os.path.join(tmp, "weights.npz")) as w:
    net.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files}, strict=True)
  with np.load(os.path.join(tmp, "inputs.npz")) as inp:
    x = torch.from_numpy(inp["x"]).permute(0, 3, 1, 2).contiguous()
    sigma = torch.from_numpy(inp["sigma"])
    labels = torch.from_numpy(inp["labels"]) if "labels" in inp.files else None
  out = {}
  with torch.no_grad():
    d, logvar = net(x, sigma, labels, return_logvar=True)
    out["D_labels"] = d.permute(0, 2, 3, 1).numpy()
    out["logvar"] = logvar.reshape(-1).numpy()
    if labels is not None:
      out["D_none"] = net(x, sigma, None).permute(0, 2, 3, 1).numpy()
  np.savez(os.path.join(tmp, "outputs.npz"), **out)


def ours(config, state_dict, x, sigma, labels):
  """Our (D(labels), D(None), logvar) with the converted weights, float32."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gendistill.nets import denoiser as denoiser_lib  # pylint: disable=g-import-not-at-top
  from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top
  net = denoiser_lib.Denoiser(backbone=edm2.EDM2(**config), preconditioning="edm", sigma_data=0.5)
  variables = edm2.from_torch_state_dict(state_dict, config)
  out = {"D_labels": np.asarray(net.apply(variables, jnp.asarray(x), jnp.asarray(sigma),
                                          None if labels is None else jnp.asarray(labels))),
         "logvar": np.asarray(edm2.logvar_fn(net)(variables, jnp.asarray(sigma)))}
  if labels is not None:
    out["D_none"] = np.asarray(net.apply(variables, jnp.asarray(x), jnp.asarray(sigma), None))
  return out


def resolve(config):
  from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top
  return dict(edm2.PRESETS[config]) if isinstance(config, str) else dict(config)


def compare(name, config, args, batch):
  from gendistill.nets import edm2  # pylint: disable=g-import-not-at-top
  state_dict = edm2.random_state_dict(config, SEED)
  x, sigma, labels = _inputs(config, batch, SEED)
  ref = run_official(args.official_root, args.torch_python, config, state_dict, x, sigma, labels)
  got = ours(config, state_dict, x, sigma, labels)
  n_params = sum(v.size for v in state_dict.values())
  for key in sorted(ref):
    err = np.abs(ref[key] - got[key])
    per_sigma = ", ".join(f"{s:g}: {e:.2e}" for s, e in zip(sigma, err.reshape(len(sigma), -1).max(axis=1)))
    print(f"{name} ({n_params} parameters) {key}: max abs error {err.max():.3e} (max |ref| "
          f"{np.abs(ref[key]).max():.3g}); per sigma {per_sigma}", flush=True)
  return state_dict, x, sigma, labels, ref


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--official_root", required=True, help="a checkout of NVlabs/edm2")
  parser.add_argument("--torch_python", default=sys.executable, help="a Python with torch and numpy")
  parser.add_argument("--official", help=argparse.SUPPRESS)
  parser.add_argument("--preset", help="a published size from gendistill.nets.edm2.PRESETS: compare, print")
  parser.add_argument("--batch", type=int, default=len(SIGMAS))
  parser.add_argument("--out", help="write the tiny fixture here (e.g. tests/fixtures/edm2_tiny.npz)")
  args = parser.parse_args()
  if args.official:
    return _official_main(args.official, args.official_root)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if args.preset:
    compare(args.preset, resolve(args.preset), args, args.batch)
    return
  fixture = {"seed": np.int64(SEED)}
  for name, spec in CONFIGS.items():
    config = resolve(spec)
    _, x, sigma, labels, ref = compare(name, config, args, len(SIGMAS))
    fixture[f"{name}/config"] = np.asarray(json.dumps(config))
    fixture[f"{name}/x"], fixture[f"{name}/sigma"] = x, sigma
    if labels is not None:
      fixture[f"{name}/labels"] = labels
    for key, value in ref.items():
      fixture[f"{name}/{key}"] = value
  if args.out:
    np.savez_compressed(args.out, **fixture)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
  main()
