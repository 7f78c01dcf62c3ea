"""`sct` and `scd`: continuous-time consistency models in TrigFlow (sCM; Lu & Song, "Simplifying, Stabilizing
and Scaling Continuous-Time Consistency Models", ICLR 2025).

TrigFlow. x_t = cos(t) x_0 + sin(t) z, z ~ N(0, sigma_d^2 I), t in [0, pi/2]; the PF-ODE is
dx_t/dt = sigma_d F(x_t/sigma_d, t), and the consistency function is
  f_theta(x_t, t) = cos(t) x_t - sin(t) sigma_d F_theta(x_t/sigma_d, t).

EDM <-> TrigFlow, exactly. With x = x_t / cos t and sigma = sigma_d tan t, EDM's coefficients become
c_skip = cos^2 t, c_out = sigma_d sin t, c_in = cos t / sigma_d, so an EDM denoiser is
  D(x_t / cos t; sigma_d tan t) = cos(t) x_t + sigma_d sin(t) F_raw(x_t / sigma_d; ln(sigma_d tan t) / 4),
i.e. f_theta with F_theta = -F_raw and the time input c_noise(t) = ln(sigma_d tan t)/4. The student here is
exactly that: the backbone of the received `generator` network (a denoiser) under TrigFlow coefficients
(`trigflow_apply_fn`), so it starts from an EDM teacher's parameters unchanged (sCD; and sCT fine-tuned from a
diffusion model as in the paper) and exports as an ordinary EDM denoiser (`denoiser_apply_fn`); from a teacher
whose network.preconditioning is not 'edm' it starts as the same backbone under other coefficients (not the
teacher's function). A teacher of any preconditioning is converted by `teacher_velocity`:
dx_t/dt = (cos(t) x_t - D(x_t / cos t; sigma_d tan t)) / sin(t) (tested against the closed-form TrigFlow
velocity of a Gaussian and against -F_raw for an EDM network).

The continuous-time objective (the paper's Algorithm 1, with theta^- = sg[theta]):
  sCT: dx_t/dt = cos(t) z - sin(t) x_0 (the conditional velocity, from data);
  sCD: dx_t/dt = sigma_d F_teacher (the teacher's PF-ODE velocity, optionally CFG-guided);
  (F^-, T) = jvp(F_theta^-, (x_t, t), (cos t sin t dx_t/dt, cos t sin t))   -> T = cos t sin t dF^-/dt;
  g = -cos^2(t) (sigma_d F^- - dx_t/dt) - r (cos t sin t x_t + sigma_d T),    r = min(1, step / warmup_steps);
  g <- g / (||g|| + c)   (tangent normalisation, c = 0.1; or clipping to [-1, 1]; or none: in 2-D sCT's tangent,
                          random given x_t, would be averaged as a median, not a mean: the toy preset's 'none');
  L = E_t [ lambda(t) e^{-w_phi(t)} mean_pix (F_theta - F^- - g)^2 + w_phi(t) ],   lambda(t) = 1/(sigma_d tan t).
g = cos(t) d f^-/dt, so grad L = -2 E[lambda e^{-w} grad F_theta^T g]: the gradient of the continuous-time
consistency loss (zero when f is constant along the ODE; tested on a Gaussian's exact f). w_phi is the learned
adaptive weighting (its own role `weighting`, kind 'time_weighting' of nets.build_networks: Fourier features of
c_noise(t) and one linear layer, trained on the same loss, which drives e^{w} to the loss's running scale).
The JVP goes through the whole backbone with jax.jvp, so it composes with remat, bf16 compute and sharding.
t: sigma = e^tau, tau ~ N(p_mean, p_std^2), t = arctan(sigma / sigma_d).

Sampling: x = sigma_d z at t_max = arctan(sigma_max / sigma_d), x_0 = f(x, t_max); for each later level t,
x = cos(t) x_0 + sin(t) sigma_d z' and x_0 = f(x, t). Levels are given as EDM sigmas (`sample_sigmas`).

Paper vs implementations (no official code was available; NVlabs/FastGen has a reimplementation, read here):
- The paper's own networks take TrigFlow's t as their time input; here the time input is EDM's (the exact
  conversion above), which is also how FastGen wraps EDM networks.
- FastGen divides the per-sample mean squared error once more by the number of pixels and makes ||g|| invariant
  to spatial size; here the paper's form (mean over pixels, e^{-w} weighting, ||g|| the plain per-sample norm)
  unless `tangent_norm='clip'`.
- FastGen takes w from a log-variance head of the network itself; here (as the paper) a separate small network:
  fixed Fourier features of the time input and one linear layer.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.diffusion.guidance import guided_apply
from gendistill.diffusion.noise import expand
from gendistill.objectives import base, register
from gendistill.objectives import score_common as sc
from gendistill.sharding.accumulation import accumulate_gradients

G = sc.GENERATOR
W = "weighting"
sg = jax.lax.stop_gradient
TANGENT_NORMS = ("normalize", "clip", "none")


def _config(**kw) -> ml_collections.ConfigDict:
  c = dict(
      p_mean=-1.0,              # training t: sigma = exp(N(p_mean, p_std^2)), t = arctan(sigma / sigma_d)
      p_std=1.4,
      tangent_warmup_steps=10_000,  # r = min(1, step / warmup) on the tangent's second term
      tangent_norm="normalize",  # normalize (g / (||g|| + c)) | clip (to [-1, 1]) | none
      tangent_c=0.1,
      prior_weighting=True,     # lambda(t) = 1 / (sigma_d tan t)
      adaptive_weighting=True,  # learned w_phi(t); False: w = 0
      weighting_features=128,   # Fourier features of c_noise(t) in w_phi
      guidance=1.0,             # sCD: CFG scale of the teacher's velocity
      init="auto",              # auto | teacher | random: the student from the teacher's parameters
      sigma_max=80.0,           # the sampler's first level (EDM sigma); t_max = arctan(sigma_max / sigma_d)
      sample_sigmas=(80.0, 0.821),  # the multistep sampler's levels as EDM sigmas; `steps` takes the first ones
      optimizer=state_lib.optimizer_config(lr=1e-4, name="radam", b1=0.9, b2=0.99),
      weighting_optimizer=state_lib.optimizer_config(lr=1e-4, name="radam", b1=0.9, b2=0.99),
      ema=state_lib.ema_config(halflife_kimg=0.0, rampup_ratio=0.0, decay=0.9999),
  )
  c.update(kw)
  return ml_collections.ConfigDict(c)


def sct_config() -> ml_collections.ConfigDict:
  return _config()


def scd_config() -> ml_collections.ConfigDict:
  return _config(p_mean=-0.8, p_std=1.6)


# ------------------------------------------------------------------------------------------------------------
# TrigFlow parameterisation (pure functions).


def sigma_to_t(sigma, sigma_data):
  return jnp.arctan(jnp.asarray(sigma, jnp.float32) / sigma_data)


def c_noise(t, sigma_data):
  """EDM's time input ln(sigma)/4 at sigma = sigma_d tan t."""
  return jnp.log(sigma_data * jnp.tan(t)) / 4


def consistency_fn(F, x_t, t, sigma_data):
  """f = cos(t) x_t - sin(t) sigma_d F."""
  return expand(jnp.cos(t), x_t) * x_t - expand(jnp.sin(t), x_t) * sigma_data * F


def teacher_velocity(denoise_fn, x_t, t, sigma_data):
  """dx_t/dt = sigma_d F_teacher(x_t/sigma_d, t) of any denoiser D(x; sigma) (EDM coordinates): the exact
  TrigFlow form (cos t x_t - D(x_t / cos t; sigma_d tan t)) / sin t."""
  cos, sin = jnp.cos(t), jnp.sin(t)
  d = denoise_fn(x_t / expand(cos, x_t), sigma_data * jnp.tan(t))
  return (expand(cos, x_t) * x_t - d) / expand(sin, x_t)


def trigflow_apply_fn(network, sigma_data: float):
  """F_theta(params, x_t, t, labels, train, rngs) = -F_raw(x_t / sigma_d; c_noise(t)) of `network`'s backbone (a
  `nets.Network` with `apply_backbone`, whose parameters it takes as they are): the TrigFlow network of an EDM
  denoiser."""
  if network.apply_backbone is None:
    raise ValueError("sCM needs a network with a separate backbone (Network.apply_backbone), e.g. "
                     "Network.from_module of a nets.Denoiser.")

  def apply_fn(params, x_t, t, labels=None, train=False, rngs=None):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    raw = network.apply_backbone(params, x_t / sigma_data, c_noise(t, sigma_data), labels, train=train, rngs=rngs)
    return -raw.astype(jnp.float32)
  return apply_fn


def denoiser_apply_fn(trig_fn, sigma_data: float):
  """The network contract D(x; sigma) of a TrigFlow network: f(x cos t, t) at t = arctan(sigma / sigma_d).
  For the backbone of an EDM denoiser this is that denoiser, exactly."""
  def apply_fn(params, x, sigma, labels=None, train=False, rngs=None):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    t = sigma_to_t(sigma, sigma_data)
    x_t = expand(jnp.cos(t), x) * x
    return consistency_fn(trig_fn(params, x_t, t, labels, train=train, rngs=rngs), x_t, t, sigma_data)
  return apply_fn


# ------------------------------------------------------------------------------------------------------------
# The loss (pure).


def sample_t(rng, n, p_mean, p_std, sigma_data):
  return sigma_to_t(jnp.exp(p_mean + p_std * jax.random.normal(rng, (n,))), sigma_data)


def normalize_tangent(g, kind="normalize", c=0.1):
  if kind == "normalize":
    norm = jnp.sqrt(sc.per_sample_sum(g.astype(jnp.float32) ** 2))
    return g / expand(norm + c, g)
  if kind == "clip":
    return jnp.clip(g, -1.0, 1.0)
  if kind == "none":
    return g
  raise ValueError(f"tangent_norm must be one of {TANGENT_NORMS}; got {kind!r}.")


def tangent(F_minus_fn, x_t, t, dxdt, *, sigma_data, warmup=1.0, norm="normalize", c=0.1):
  """(F^-, g): the stop-gradient branch's output and the normalised tangent g = cos(t) df^-/dt (the first
  term always, the second scaled by the warm-up ratio). F_minus_fn(x_t, t) has sg parameters bound; the JVP
  tangent is scaled by cos t sin t so it stays bounded at both ends of [0, pi/2]."""
  cos, sin = jnp.cos(t), jnp.sin(t)
  cs = cos * sin
  F_minus, jvp = jax.jvp(F_minus_fn, (x_t, t), (expand(cs, x_t) * dxdt, cs))
  F_minus, jvp, dxdt = sg(F_minus), sg(jvp), sg(dxdt)
  g1 = -expand(cos**2, x_t) * (sigma_data * F_minus - dxdt)
  g2 = -(expand(cs, x_t) * x_t + sigma_data * jvp)
  return F_minus, normalize_tangent(g1 + warmup * g2, norm, c)


def scm_loss(F_theta, F_minus, g, t, logvar, *, sigma_data, prior_weighting=True):
  """Per-sample lambda(t) e^{-w} mean_pix (F_theta - F^- - g)^2 + w, and the unweighted mean square."""
  mse = sc.per_sample_mean((F_theta - F_minus - g) ** 2)
  weight = 1.0 / (sigma_data * jnp.tan(t)) if prior_weighting else jnp.ones_like(t)
  return weight * jnp.exp(-logvar) * mse + logvar, mse


def scm_objective(F_fn, params, x0, z, t, dxdt_fn, logvar, *, sigma_data, warmup=1.0, norm="normalize", c=0.1,
                  prior_weighting=True):
  """The whole sCM loss of one batch: x_t from (x0, z, t), dx_t/dt = dxdt_fn(x_t, t) (sCT: the conditional
  velocity; sCD: the teacher's), F_fn(params, x_t, t) the network. Returns (mean loss, per-sample mse)."""
  cos, sin = jnp.cos(t), jnp.sin(t)
  x_t = expand(cos, x0) * x0 + expand(sin, x0) * z
  dxdt = dxdt_fn(x_t, t)
  F_minus, g = tangent(lambda x, s: F_fn(sg(params), x, s), x_t, t, dxdt, sigma_data=sigma_data, warmup=warmup,
                       norm=norm, c=c)
  per_sample, mse = scm_loss(F_fn(params, x_t, t), F_minus, g, t, logvar, sigma_data=sigma_data,
                             prior_weighting=prior_weighting)
  return jnp.mean(per_sample), mse


def trigflow_sampler(f_fn, z, ts, rng=None, sigma_data=0.5):
  """x = sigma_d z, x_0 = f(x, ts[0]); for each later t: x = cos t x_0 + sin t sigma_d z', x_0 = f(x, t)."""
  ts = [float(t) for t in ts]
  n = z.shape[0]
  x0 = f_fn(sigma_data * z, jnp.full((n,), ts[0]))
  for k, t in enumerate(ts[1:]):
    noise = jax.random.normal(jax.random.fold_in(rng, k), z.shape, z.dtype)
    x0 = f_fn(math.cos(t) * x0 + math.sin(t) * sigma_data * noise, jnp.full((n,), t))
  return x0


# ------------------------------------------------------------------------------------------------------------
# The objectives.


ROLES = {G: "denoiser", W: "time_weighting"}


def _build(cfg, networks, spec, run: base.RunFacts, name: str) -> base.Objective:
  distill = name == "scd"
  normalize_tangent(jnp.zeros((1, 1)), cfg.tangent_norm)   # validate early
  net, weight_net = networks[G], networks[W]
  sigma_data = float(net.sigma_data)
  trig_fn = trigflow_apply_fn(net, sigma_data)
  export_fn = denoiser_apply_fn(trig_fn, sigma_data)
  tx = {G: state_lib.make_optimizer(cfg.optimizer), W: state_lib.make_optimizer(cfg.weighting_optimizer)}
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  microbatches = run.microbatches
  warmup_steps = int(cfg.tangent_warmup_steps)

  def init(rng, batch, teacher=None):
    x, labels = base.batch_inputs(batch, spec)
    rng_net, rng_w, state_rng = jax.random.split(rng, 3)
    params, _ = sc.init_from_teacher(net, rng_net, x, labels, teacher, cfg.init)
    params_w = weight_net.init(rng_w, jnp.zeros((x.shape[0],), jnp.float32))
    return state_lib.create(state_rng, {G: params, W: params_w}, tx, ema_roles=(G,))

  def loss_fn(params, mb, rng_dropout, warmup, teacher):
    rngs = sc.dropout_rngs(rng_dropout)
    labels = mb["labels"]
    F_fn = lambda p, x, s: trig_fn(p, x, s, labels, train=True, rngs=rngs)   # one dropout mask for both
    if distill:
      denoise = lambda x, s: guided_apply(teacher.apply_fn, teacher.params, x, s, labels, cfg.guidance)
      dxdt_fn = lambda x_t, t: teacher_velocity(denoise, x_t, t, sigma_data)
    else:
      x0, z, t0 = mb["x"], mb["z"], mb["t"]
      dxdt_fn = lambda x_t, t: expand(jnp.cos(t0), z) * z - expand(jnp.sin(t0), x0) * x0
    logvar = (weight_net.apply(params[W], c_noise(mb["t"], sigma_data)) if cfg.adaptive_weighting
              else jnp.zeros_like(mb["t"]))
    loss, mse = scm_objective(F_fn, params[G], mb["x"], mb["z"], mb["t"], dxdt_fn, logvar, sigma_data=sigma_data,
                              warmup=warmup, norm=cfg.tangent_norm, c=cfg.tangent_c,
                              prior_weighting=cfg.prior_weighting)
    return loss, {"mse": jnp.mean(mse), "logvar": jnp.mean(logvar)}

  def train_step(state, batch, teacher=None):
    if distill and teacher is None:
      raise ValueError("sCD needs a teacher (config.teacher).")
    x, labels = base.batch_inputs(batch, spec)
    (rng,) = state.step_rng(G)
    rng_t, rng_z, rng_dropout = jax.random.split(rng, 3)
    mb = dict(x=x, labels=labels, z=sigma_data * jax.random.normal(rng_z, x.shape, x.dtype),
              t=sample_t(rng_t, x.shape[0], cfg.p_mean, cfg.p_std, sigma_data))
    warmup = (jnp.minimum(1.0, state.step.astype(jnp.float32) / warmup_steps) if warmup_steps > 0
              else jnp.asarray(1.0, jnp.float32))
    params = {G: state.params[G], W: state.params[W]}
    (loss, aux), grads = accumulate_gradients(loss_fn, params, mb, rng_dropout, warmup,
                                                teacher if distill else None, num_microbatches=microbatches,
                                                has_aux=True)
    state, metrics = state_lib.apply_gradients(state, G, grads[G], tx[G])
    state, metrics_w = state_lib.apply_gradients(state, W, grads[W], tx[W])
    decay = ema_decay(state.step)
    state = state.replace(step=state.step + 1,
                          ema={**state.ema, G: state_lib.ema_update(state.ema[G], state.params[G], decay)})
    metrics.update({f"{G}/loss": loss, f"{G}/mse": aux["mse"], f"{G}/logvar": aux["logvar"],
                    f"{G}/tangent_warmup": warmup, f"{G}/ema_decay": decay, **metrics_w})
    return state, metrics

  def sample(state, rng, num, labels=None, steps=None):
    """1-step (default) or `steps`-step TrigFlow consistency sampling with the EMA network."""
    rng_labels, rng_z, rng_steps = jax.random.split(rng, 3)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    z = jax.random.normal(rng_z, (num,) + tuple(spec.shape))
    sigmas = (float(cfg.sigma_max),) + tuple(float(s) for s in cfg.sample_sigmas)[1:]
    steps = steps or 1
    if steps > len(sigmas):
      raise ValueError(f"objective.{name}.sample_sigmas lists {len(sigmas)} levels; {steps} steps requested.")
    ts = [math.atan(s / sigma_data) for s in sigmas[:steps]]
    f_fn = lambda x_t, t: consistency_fn(trig_fn(state.ema[G], x_t, t, onehot), x_t, t, sigma_data)
    return trigflow_sampler(f_fn, z, ts, rng_steps, sigma_data)

  return base.Objective(name=name, init=init, train_step=train_step, sample=sample, export_role=G,
                        apply_fn=export_fn, accumulates_gradients=True)


@register("sct", sct_config, ROLES)
def build_sct(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  return _build(cfg, networks, spec, run, "sct")


@register("scd", scd_config, ROLES)
def build_scd(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  return _build(cfg, networks, spec, run, "scd")
