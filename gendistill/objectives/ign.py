"""`ign`: Idempotent Generative Networks (Shocher et al., ICLR 2024; docs/objectives/gan_and_ign.md).

One network f is trained to be a projector onto the data manifold: f(x) = x for data, f(f(z)) = f(z) for noise.

  L_rec   = D(f(x), x)
  L_idem  = D(f(sg[theta], f(z)), f(z))                 gradient only through the inner application
  L~tight = -D(f(theta, sg[f(z)]), sg[f(z)])            gradient only through the outer application
  L_tight = tanh(L~tight / (a L_rec)) a L_rec           a smooth clamp into (-a L_rec, 0], a = 1.5
  L       = 20 L_rec + 20 L_idem + 2.5 L_tight

The paper's "frozen copy" f_theta' is f with stop-gradient on its PARAMETERS, so no copy is kept. D is L1 (the
described setup) or MSE (the paper's listing), the mean over elements per sample (PyTorch's `F.l1_loss`), then
the batch mean. The clamp is per sample (x_i and z_i paired, each L~tight_i clamped by its own L_rec_i, then
averaged: a known reimplementation does this) or on the batch means; either way the result lies in
(-a L_rec, 0] with L_rec the batch mean. The clamp's scale a L_rec is not stop-gradient (the formula as written).
`tight_clamp = 0` turns the clamp off (the listing's variant, there with weight 0.1).

Mode coverage. The tightness term is a critic played by f itself, and like a GAN's it lets f(z) pile onto some
modes and leave others empty: the paper lists mode collapse among IGN's limits, and on 2-D mixtures this
library's toy runs lost components on every mixture (experiments/toy_family.md). `lambda_imle > 0` adds
an implicit-maximum-likelihood term (Li and Malik, 2019; the non-adversarial ingredient of Al-Jaff et al.'s
NAIGN, 2025): each real sample pulls the generated sample nearest to it toward itself,

  L_imle = mean_i D(f(z_j(i)), x_i),   j(i) = argmin_j |f(z_j) - x_i|^2 over the batch (chosen under stop-gradient)

so a mode that no generated sample reaches still pulls its nearest one. Off by default (the paper's loss).

The network. f is the library's preconditioned Denoiser (`nets.build_denoiser`: UNet for images, MLP for toy
vectors) evaluated at one fixed noise level `sigma` (default 1, the scale of the noise inputs z ~ N(0, I)):
f(x) = c_skip x + c_out F(c_in x; c_noise), so f keeps the network contract (`apply_fn(params, x, sigma, labels)`:
exportable, loadable as a teacher) and input/output scales are handled by EDM's preconditioning for both data
(std 0.5) and noise (std 1) inputs. f is not the identity at initialisation (c_skip(1) = 0.2). Class-conditional
data gives f(x, y): real samples with their labels, noise with uniformly drawn labels.

Noise. `noise='gaussian'`: z ~ N(0, I). `noise='fourier'`: noise with the data's frequency statistics (the paper's
CelebA setting): z = IFFT(A * exp(i phi)) with A the root-mean-square FFT amplitude of the data (per frequency and
channel, over the spatial axes; over the feature axis for vectors) and a uniformly random phase (the phase of the
FFT of white noise, which keeps z real). A is a running average over training batches kept in
`state.extra['noise_amplitude']` and used again by `sample`.

Sampling: f(z) in one step; `steps = k` refines, f^k(z). "Make it real": `project(apply_fn, params, corrupted,
sigma=..., steps=k)` (or `projector(config, spec)`) maps corrupted inputs onto the manifold; `CORRUPTIONS` holds
noise, mask, blur and sketch corruptions of images in [-1, 1].
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.objectives import base, register

ROLE = "generator"
DISTANCES = ("l1", "mse")
CLAMP_MODES = ("per_sample", "batch")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      sigma=1.0,                    # the fixed noise level at which the Denoiser is f
      distance="l1",                # l1 (the described setup) | mse (the listing)
      lambda_rec=20.0,
      lambda_idem=20.0,
      lambda_tight=2.5,
      lambda_imle=0.0,              # > 0: each real sample pulls its nearest f(z) (IMLE; mode coverage)
      tight_clamp=1.5,              # a; 0 disables the tanh clamp
      tight_clamp_mode="per_sample",  # per_sample | batch
      noise="gaussian",             # gaussian | fourier (the data's FFT amplitude, random phase)
      noise_amplitude_decay=0.99,   # running average of the data's FFT amplitude (fourier noise)
      sample_ema=True,              # sample and project with the EMA parameters
      optimizer=state_lib.optimizer_config(lr=1e-4, b1=0.5, b2=0.999),
      ema=state_lib.ema_config(halflife_kimg=0.0, decay=0.999),
  ))


# ----------------------------------------------------------------------------------------------------------
# Losses.


def distance(a, b, kind: str = "l1"):
  """Per-sample distance: the mean over all non-batch elements of |a - b| (l1) or (a - b)^2 (mse). [N]."""
  diff = jnp.reshape(a - b, (a.shape[0], -1))
  if kind == "l1":
    return jnp.mean(jnp.abs(diff), axis=1)
  if kind == "mse":
    return jnp.mean(diff**2, axis=1)
  raise ValueError(f"Unknown distance {kind!r}; expected one of {DISTANCES}.")


def tight_clamp(tight_raw, rec, a: float, mode: str = "per_sample"):
  """tanh(L~tight / (a L_rec)) a L_rec, in (-a L_rec, 0] for L~tight <= 0; 0 where L_rec = 0 (the limit).

  tight_raw, rec: per-sample [N]. mode 'per_sample' clamps pairs and averages; 'batch' clamps the batch means.
  """
  if mode == "batch":
    tight_raw, rec = jnp.mean(tight_raw), jnp.mean(rec)
  elif mode != "per_sample":
    raise ValueError(f"Unknown tight_clamp_mode {mode!r}; expected one of {CLAMP_MODES}.")
  positive = rec > 0
  scale = a * jnp.where(positive, rec, 1.0)
  return jnp.mean(jnp.where(positive, jnp.tanh(tight_raw / scale) * scale, 0.0))


def imle_loss(x, fz, labels_x=None, labels_z=None, distance_kind="l1"):
  """mean_i D(fz[j(i)], x_i) with j(i) the generated sample nearest to x_i in squared Euclidean distance (among
  those with x_i's label when labels, one-hot, are given; a real sample with no such neighbour is left out).

  The choice of j is under stop-gradient; the distance's gradient reaches only the chosen generated samples.
  """
  xf = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
  gf = jax.lax.stop_gradient(jnp.reshape(fz, (fz.shape[0], -1))).astype(jnp.float32)
  d2 = jnp.sum(xf**2, 1)[:, None] - 2.0 * xf @ gf.T + jnp.sum(gf**2, 1)[None, :]
  if labels_x is None:
    valid = jnp.ones((x.shape[0],), bool)
  else:
    same = (labels_x @ labels_z.T) > 0.5
    d2 = jnp.where(same, d2, jnp.inf)
    valid = jnp.any(same, axis=1)
  nearest = jnp.argmin(d2, axis=1)
  per_sample = jnp.where(valid, distance(fz[nearest], x, distance_kind), 0.0)
  return jnp.sum(per_sample) / jnp.maximum(jnp.sum(valid), 1)


def ign_losses(f: Callable, params, x, z, labels_x=None, labels_z=None, rng=None, *, distance_kind="l1",
               clamp=1.5, clamp_mode="per_sample", weights=(20.0, 20.0, 2.5), imle_weight=0.0):
  """IGN's loss and its parts. f(params, inputs, labels, rng) -> outputs of the inputs' shape.

  Three applications of f: f(theta, [x; z]) (one batch), f(sg[theta], f(z)) and f(theta, sg[f(z)]).
  `rng` (or None) is split into one key per application (dropout). `imle_weight` > 0 adds imle_loss on the same
  f(x), f(z) pass. Returns (loss, aux) with aux holding the batch means rec, idem, tight_raw (L~tight), tight
  (clamped), imle (0 when off) and fz = f(z).
  """
  n = x.shape[0]
  keys = (None,) * 3 if rng is None else tuple(jax.random.split(rng, 3))
  labels = None if labels_x is None else jnp.concatenate([labels_x, labels_z])
  both = f(params, jnp.concatenate([x, z]), labels, keys[0])
  fx, fz = both[:n], both[n:]
  rec = distance(fx, x, distance_kind)
  idem = distance(f(jax.lax.stop_gradient(params), fz, labels_z, keys[1]), fz, distance_kind)
  fz_sg = jax.lax.stop_gradient(fz)
  tight_raw = -distance(f(params, fz_sg, labels_z, keys[2]), fz_sg, distance_kind)
  tight = tight_clamp(tight_raw, rec, clamp, clamp_mode) if clamp > 0 else jnp.mean(tight_raw)
  w_rec, w_idem, w_tight = weights
  imle = imle_loss(x, fz, labels_x, labels_z, distance_kind) if imle_weight > 0 else jnp.zeros((), jnp.float32)
  loss = w_rec * jnp.mean(rec) + w_idem * jnp.mean(idem) + w_tight * tight + imle_weight * imle
  aux = dict(rec=jnp.mean(rec), idem=jnp.mean(idem), tight_raw=jnp.mean(tight_raw), tight=tight, imle=imle, fz=fz)
  return loss, aux


# ----------------------------------------------------------------------------------------------------------
# Noise with the data's frequency statistics.


def _fft_axes(ndim: int):
  """Spatial axes of [N, H, W, C] images, the feature axis of [N, D] vectors."""
  return (1, 2) if ndim == 4 else tuple(range(1, ndim))


def fourier_amplitude(x):
  """Root-mean-square FFT amplitude of a batch over its spatial axes: [H, W, C] (images) or [D] (vectors)."""
  spectrum = jnp.fft.fftn(x.astype(jnp.float32), axes=_fft_axes(x.ndim))
  return jnp.sqrt(jnp.mean(jnp.abs(spectrum) ** 2, axis=0))


def fourier_noise(rng, amplitude, num: int):
  """num samples with FFT amplitude `amplitude` and uniformly random phase (real-valued)."""
  shape = (num,) + tuple(amplitude.shape)
  axes = _fft_axes(len(shape))
  white = jnp.fft.fftn(jax.random.normal(rng, shape), axes=axes)
  phase = white / jnp.maximum(jnp.abs(white), 1e-12)
  return jnp.real(jnp.fft.ifftn(amplitude[None] * phase, axes=axes)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# Projection ("make it real") and corruptions.


def project(apply_fn, params, corrupted, *, sigma: float, labels=None, steps: int = 1):
  """f^steps(corrupted): the network's projection of (corrupted) inputs onto its manifold."""
  x = corrupted
  for _ in range(steps):
    x = apply_fn(params, x, sigma, labels)
  return x


def corrupt_noise(rng, x, std: float = 0.4):
  return x + std * jax.random.normal(rng, x.shape, x.dtype)


def corrupt_mask(rng, x, frac: float = 0.4, fill: float = 0.0):
  """A random square of side frac * H per image filled with `fill` (occlusion)."""
  n, h, w = x.shape[:3]
  side_h, side_w = max(1, int(round(frac * h))), max(1, int(round(frac * w)))
  rng_y, rng_x = jax.random.split(rng)
  top = jax.random.randint(rng_y, (n, 1, 1), 0, h - side_h + 1)
  left = jax.random.randint(rng_x, (n, 1, 1), 0, w - side_w + 1)
  rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  inside = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
  return jnp.where(inside[..., None], fill, x)


def _depthwise(x, kernel):
  """2-D 'same' convolution of NHWC x with one [kh, kw] kernel per channel."""
  c = x.shape[-1]
  k = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c)).astype(x.dtype)
  ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
  return jax.lax.conv_general_dilated(
      jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge"), k, (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def corrupt_blur(rng, x, sigma_px: float = 1.0):
  """Gaussian blur with standard deviation sigma_px pixels (rng unused)."""
  del rng
  radius = max(1, int(3 * sigma_px))
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  g = jnp.exp(-0.5 * (t / sigma_px) ** 2)
  g = g / jnp.sum(g)
  return _depthwise(x, g[:, None] * g[None, :])


def corrupt_sketch(rng, x, threshold: float = 0.5):
  """A line drawing: Sobel edge magnitude, normalised per image, thresholded to strokes (+1) on -1 (rng unused)."""
  del rng
  sobel = jnp.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
  mag = jnp.sqrt(_depthwise(x, sobel) ** 2 + _depthwise(x, sobel.T) ** 2)
  mag = mag / jnp.maximum(jnp.max(mag, axis=(1, 2, 3), keepdims=True), 1e-6)
  return jnp.where(mag > threshold, 1.0, -1.0).astype(x.dtype)


CORRUPTIONS = {"noise": corrupt_noise, "mask": corrupt_mask, "blur": corrupt_blur, "sketch": corrupt_sketch}


# ----------------------------------------------------------------------------------------------------------
# The objective.


def projector(network, cfg) -> Callable:
  """project(params, corrupted, labels=None, steps=1) for the `ign` network (labels one-hot); cfg: the ign
  section."""
  return functools.partial(project, network.apply, sigma=cfg.sigma)


def sampling_params(state, cfg):
  return state.ema[ROLE] if cfg.sample_ema else state.params[ROLE]


@register("ign", default_config, {ROLE: "denoiser"})
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  if cfg.noise not in ("gaussian", "fourier"):
    raise ValueError(f"Unknown objective.ign.noise {cfg.noise!r}; expected 'gaussian' or 'fourier'.")
  net = networks[ROLE]
  apply_fn = net.apply
  tx = state_lib.make_optimizer(cfg.optimizer)
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  sigma = cfg.sigma
  loss_fn = functools.partial(
      ign_losses, distance_kind=cfg.distance, clamp=cfg.tight_clamp, clamp_mode=cfg.tight_clamp_mode,
      weights=(cfg.lambda_rec, cfg.lambda_idem, cfg.lambda_tight), imle_weight=cfg.lambda_imle)

  def f(params, x, labels, rng):
    return apply_fn(params, x, sigma, labels, train=True, rngs=None if rng is None else {"dropout": rng})

  def init(rng, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    init_rng, state_rng = jax.random.split(rng)
    params = net.init(init_rng, x, jnp.full((x.shape[0],), sigma), labels)
    extra = {"noise_amplitude": jnp.zeros(spec.shape, jnp.float32)} if cfg.noise == "fourier" else {}
    return state_lib.create(state_rng, {ROLE: params}, {ROLE: tx}, ema_roles=(ROLE,), extra=extra)

  def draw_noise(rng, num, extra):
    if cfg.noise == "fourier":
      return fourier_noise(rng, extra["noise_amplitude"], num)
    return jax.random.normal(rng, (num,) + tuple(spec.shape))

  def train_step(state, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    rng_noise, rng_labels, rng_loss = state.step_rng("noise", "labels", "loss")
    extra = dict(state.extra)
    if cfg.noise == "fourier":
      amp = fourier_amplitude(x)
      decay = cfg.noise_amplitude_decay
      extra["noise_amplitude"] = jnp.where(state.step == 0, amp, decay * extra["noise_amplitude"] + (1 - decay) * amp)
    z = draw_noise(rng_noise, x.shape[0], extra)
    labels_z = base.sample_labels(rng_labels, x.shape[0], None, spec.num_classes)
    (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
        f, state.params[ROLE], x, z, labels, labels_z, rng_loss)
    state, metrics = state_lib.apply_gradients(state, ROLE, grads, tx)
    decay = ema_decay(state.step)
    state = state.replace(step=state.step + 1, extra=extra,
                          ema={ROLE: state_lib.ema_update(state.ema[ROLE], state.params[ROLE], decay)})
    metrics.update({f"{ROLE}/loss": loss, f"{ROLE}/loss_rec": aux["rec"], f"{ROLE}/loss_idem": aux["idem"],
                    f"{ROLE}/loss_tight": aux["tight"], f"{ROLE}/loss_tight_raw": aux["tight_raw"]})
    if cfg.lambda_imle > 0:
      metrics[f"{ROLE}/loss_imle"] = aux["imle"]
    return state, metrics

  def sample(state, rng, num, labels=None, steps=None):
    """f^steps(z), steps = 1 by default."""
    rng_labels, rng_noise = jax.random.split(rng)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    z = draw_noise(rng_noise, num, state.extra)
    return project(apply_fn, sampling_params(state, cfg), z, sigma=sigma, labels=onehot, steps=steps or 1)

  return base.Objective(name="ign", init=init, train_step=train_step, sample=sample, export_role=ROLE,
                        apply_fn=apply_fn)


__all__ = ["default_config", "build", "ign_losses", "imle_loss", "tight_clamp", "distance", "fourier_amplitude",
           "fourier_noise", "project", "projector", "CORRUPTIONS", "corrupt_noise", "corrupt_mask",
           "corrupt_blur", "corrupt_sketch"]
