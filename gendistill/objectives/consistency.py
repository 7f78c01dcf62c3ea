"""Consistency models: `cd` (distillation), `ct` (training), `ict` (improved training), `ect` (easy consistency
tuning). docs/objectives/trajectory_distillation.md; one builder, four registered configs.

Parameterisation. f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x; c_noise(t)) with the consistency coefficients
of `precond.consistency` (c_skip = sd^2/((t - sigma_min)^2 + sd^2), c_out = sd (t - sigma_min)/sqrt(sd^2 + t^2)),
so f(x, sigma_min) = x exactly. F is the backbone of the received network (the teacher's architecture, so CD and
ECT can start from the teacher's parameters: the same backbone under other coefficients); the coefficients are
the method's own, so the network's own preconditioning is not used here.

One step (all methods): draw a pair of noise levels t > r and one noise z; x_t = x + t z;
  cd   x_r = one teacher Heun (or Euler) step of dx/dt = (x - D(x; t))/t from t to r  (grid t_n -> t_{n+1});
  ct, ict, ect  x_r = x + r z: the SAME z as x_t;
loss = mean_b lambda(t, r) d(f_theta(x_t, t), sg[f_theta-(x_r, r)]), both calls in train mode with the same
dropout key; theta- is the target: sg of the online parameters (cd with mu = 0, ict, ect) or an EMA of them kept
in state.extra['target'] (cd with target='ema'; ct's adaptive mu(k)), updated after the optimizer step as
theta- <- mu theta- + (1 - mu) theta. The sampler uses a separate EMA (state.ema['generator']).

Noise levels:
  cd   n ~ U{0..N-2} on the Karras grid t_n = (T^(1/rho) + n/(N-1)(eps^(1/rho) - T^(1/rho)))^rho, t = t_n, r = t_{n+1}.
  ct   the same grid with N(k) = N'(k) + 1, N'(k) = max(ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1), 1), and
       mu(k) = exp(s0 ln mu0 / N'(k)) (official code; `paper_mu` uses N(k), as the paper writes).
  ict  N(k) = min(s0 2^floor(k/K'), s1) + 1, K' = floor(K/(log2 floor(s1/s0) + 1)); the pair index n drawn
       from the discretised log-normal p(n) prop. erf((ln t_n - P_m)/(sqrt2 P_s)) - erf((ln t_{n+1} - P_m)/(sqrt2 P_s));
       no EMA target (mu = 0); pseudo-Huber d; lambda = 1/(t_n - t_{n+1}).
  ect  t ~ lognormal(P_m, P_s), r = max(t (1 - q^-(s+1)(1 + k sigmoid(-b t))), 0), stage s = floor(step /
       stage_steps); target x itself where r = 0 (non-finite targets zeroed, as the official code's nan_to_num);
       d = ||.||_2 (pseudo-Huber with c = 0), lambda = 1/(t - r).

Distances: 'l2' and 'l1' are means over the elements of a sample (the official CM code), 'pseudo_huber' is
sqrt(||d||_2^2 + c^2) - c with c = huber_c sqrt(dim) (iCT: 0.00054 sqrt(dim); ECT: c = 0, the L2 norm).
LPIPS (the CM paper's best distance) is not available here: this library has no LPIPS network.
Without a teacher the target is random given x_t (one data sample x), and the distance decides what the fixed
point estimates: the mean of squares gives the mean of the target (the ideal denoiser's ODE); a norm (ECT's c = 0,
iCT's c that is tiny against 2-D errors) gives a geometric median of it. In image dimensions the norm varies little
between samples and the two are close; in 2-D the median moves mass between modes, so the toy presets use 'l2'.

Where paper and official code differ (the official code is the default; the switch gives the paper):
- ct: mu(k)'s exponent uses N'(k) = N(k) - 1 (`paper_mu=True`: N(k)).
- ect: the official network uses EDM's c_skip/c_out while training and the consistency coefficients (sigma_min
  0.003) only when sampling (`train_preconditioning='edm'`; 'consistency' imposes the boundary condition in
  training too); its multistep sampler re-noises with x0 + t z, CM's with x0 + sqrt(t^2 - sigma_min^2) z.
- ect: the ImageNet branch weights by EDM's lambda(t) (`weighting='edm'`) instead of 1/(t - r).
- iCT has no released code: its schedules follow the paper.
"""
import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.diffusion import precond
from gendistill.diffusion import samplers
from gendistill.diffusion.noise import expand
from gendistill.objectives import base, register
from gendistill.objectives import score_common as sc
from gendistill.sharding.accumulation import accumulate_gradients

G = sc.GENERATOR
TARGET = "target"
sg = jax.lax.stop_gradient


# ------------------------------------------------------------------------------------------------------------
# Config sections.


def _common(**kw) -> ml_collections.ConfigDict:
  c = dict(
      sigma_min=0.002,          # eps: f(x, sigma_min) = x
      sigma_max=80.0,           # T: the grid's (and the sampler's) largest noise level
      rho=7.0,
      distance="l2",            # l2 | l1 | pseudo_huber
      huber_c=0.00054,          # pseudo-Huber c = huber_c * sqrt(dim)
      weighting="uniform",      # uniform | inverse_gap (1/(t - r)) | edm ((t^2 + sd^2)/(t sd)^2)
      init="auto",              # auto | teacher | random: the student from the teacher's parameters
      sample_sigmas=(80.0, 0.821),  # noise levels of the multistep sampler; `steps` uses the first ones
      optimizer=state_lib.optimizer_config(lr=4e-4, name="radam"),
      ema=state_lib.ema_config(halflife_kimg=0.0, rampup_ratio=0.0, decay=0.9999),   # the sampler's EMA
  )
  c.update(kw)
  return ml_collections.ConfigDict(c)


def cd_config() -> ml_collections.ConfigDict:
  return _common(
      num_scales=18,            # N of the grid
      solver="heun",            # heun | euler: the teacher's step from t_n to t_{n+1}
      target="online",          # online (theta- = sg[theta]) | ema (theta- an EMA with decay target_ema)
      target_ema=0.0,
  )


def ct_config() -> ml_collections.ConfigDict:
  return _common(
      init="random",
      start_scales=2,           # s0
      end_scales=150,           # s1
      start_ema=0.9,            # mu0
      total_steps=0,            # K of the schedule; 0 = train.num_steps
      paper_mu=False,           # mu(k) = exp(s0 ln mu0 / N(k)) (paper) instead of N(k) - 1 (official code)
  )


def ict_config() -> ml_collections.ConfigDict:
  return _common(
      init="random",
      distance="pseudo_huber",
      weighting="inverse_gap",
      start_scales=10,          # s0
      end_scales=1280,          # s1
      total_steps=0,            # K; 0 = train.num_steps
      p_mean=-1.1,              # discretised log-normal over the grid's pairs
      p_std=2.0,
      optimizer=state_lib.optimizer_config(lr=1e-4, b1=0.9, b2=0.995),
      ema=state_lib.ema_config(halflife_kimg=0.0, rampup_ratio=0.0, decay=0.99993),
  )


def ect_config() -> ml_collections.ConfigDict:
  return _common(
      sigma_min=0.003,
      distance="pseudo_huber",
      huber_c=0.0,              # ECT's c = 0: the plain L2 norm
      weighting="inverse_gap",
      p_mean=-1.1,              # t ~ lognormal(p_mean, p_std)
      p_std=2.0,
      q=2.0,                    # r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t)))
      k=8.0,
      b=1.0,
      stage_steps=25_000,       # the stage (and so dt) changes every this many steps
      train_preconditioning="edm",  # edm (official) | consistency
      optimizer=state_lib.optimizer_config(lr=1e-4, name="radam"),
  )


# ------------------------------------------------------------------------------------------------------------
# The parameterisation.


def preconditioned_apply_fn(network, kind: str, sigma_data: float, sigma_min: float = 0.002):
  """The network contract's apply function for `network` (a `nets.Network` with a backbone, whose parameters
  it takes as they are) with its backbone under `kind` coefficients: 'consistency' (boundary condition at
  sigma_min) or 'edm'."""
  if network.apply_backbone is None:
    raise ValueError("Consistency models need a network with a separate backbone (Network.apply_backbone), e.g. "
                     "Network.from_module of a nets.Denoiser.")
  if kind == "consistency":
    coefficients = functools.partial(precond.consistency, sigma_data=sigma_data, sigma_min=sigma_min)
  elif kind == "edm":
    coefficients = functools.partial(precond.edm, sigma_data=sigma_data)
  else:
    raise ValueError(f"preconditioning must be 'consistency' or 'edm'; got {kind!r}.")

  def apply_fn(params, x, sigma, labels=None, train=False, rngs=None):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    c = coefficients(sigma)
    raw = network.apply_backbone(params, expand(c.c_in, x) * x, c.c_noise, labels, train=train, rngs=rngs)
    return expand(c.c_skip, x) * x + expand(c.c_out, x) * raw.astype(jnp.float32)
  return apply_fn


# ------------------------------------------------------------------------------------------------------------
# Noise-level grids and curricula (pure functions of the step).


def karras_sigma(n, num_scales, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """t_n of the N-point grid from sigma_max (n = 0) down to sigma_min (n = N - 1); n and N may be traced."""
  n = jnp.asarray(n, jnp.float32)
  num = jnp.asarray(num_scales, jnp.float32)
  return samplers.karras_sigma(n / (num - 1), sigma_min, sigma_max, rho)


def ct_schedule(step, total_steps, start_scales=2, end_scales=150, start_ema=0.9, paper_mu=False):
  """CT's adaptive curriculum: (N(k), mu(k)). N'(k) = max(ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1), 1),
  N = N' + 1; mu = exp(s0 ln mu0 / N') (official code) or exp(s0 ln mu0 / N) (paper_mu)."""
  frac = jnp.asarray(step, jnp.float32) / float(total_steps)
  s0, s1 = float(start_scales), float(end_scales)
  n_prime = jnp.ceil(jnp.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)
  n_prime = jnp.maximum(n_prime, 1.0)
  num_scales = n_prime + 1
  mu = jnp.exp(s0 * math.log(start_ema) / (num_scales if paper_mu else n_prime))
  return num_scales.astype(jnp.int32), mu


def ict_num_scales(step, total_steps, start_scales=10, end_scales=1280):
  """iCT's doubling curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1, K' = floor(K/(log2 floor(s1/s0) + 1))."""
  stage_len = max(int(total_steps // (math.log2(end_scales // start_scales) + 1)), 1)
  doublings = jnp.minimum(jnp.asarray(step, jnp.int32) // stage_len, 24)   # 24: no int32 overflow
  return jnp.minimum(start_scales * jnp.left_shift(1, doublings), end_scales) + 1


def ict_pair_log_probs(num_scales, max_scales, sigma_min, sigma_max, rho, p_mean, p_std):
  """log p(n) of the pairs (t_n, t_{n+1}), n = 0..max_scales-2, of the N-point grid (pairs n >= N - 1 get
  -inf): the log-normal's mass between the two levels, erf((ln t_n - P_m)/(sqrt2 P_s)) - erf((ln t_{n+1} - ...))."""
  n = jnp.arange(max_scales - 1)
  cdf = lambda t: jax.scipy.special.erf((jnp.log(t) - p_mean) / (math.sqrt(2.0) * p_std))
  mass = cdf(karras_sigma(n, num_scales, sigma_min, sigma_max, rho)) - cdf(
      karras_sigma(n + 1, num_scales, sigma_min, sigma_max, rho))
  return jnp.where(n < num_scales - 1, jnp.log(jnp.maximum(mass, 0.0)), -jnp.inf)


def ect_stage(step, stage_steps):
  return jnp.asarray(step, jnp.int32) // int(stage_steps)


def ect_r(t, stage, q=2.0, k=8.0, b=1.0):
  """ECT's r(t) = max(t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), 0): dt shrinks by q every stage."""
  decay = jnp.power(q, -(jnp.asarray(stage, jnp.float32) + 1.0))
  return jnp.maximum(t * (1.0 - decay * (1.0 + k * jax.nn.sigmoid(-b * t))), 0.0)


# ------------------------------------------------------------------------------------------------------------
# The loss.


def ode_step(denoise_fn, x, t, s, solver="heun"):
  """One step of dx/dt = (x - D(x; t))/t from t to s (per-sample [N], s > 0): Heun (EDM Algorithm 2's
  corrected step, as CD) or Euler."""
  d = (x - denoise_fn(x, t)) / expand(t, x)
  x_next = x + expand(s - t, x) * d
  if solver == "euler":
    return x_next
  if solver != "heun":
    raise ValueError(f"solver must be 'heun' or 'euler'; got {solver!r}.")
  d_next = (x_next - denoise_fn(x_next, s)) / expand(s, x)
  return x + expand(s - t, x) * 0.5 * (d + d_next)


def distance(diff, kind="l2", huber_c=0.0):
  """Per-sample distance of diff [N, ...]: mean of squares ('l2'), mean of |.| ('l1'), or pseudo-Huber
  sqrt(||diff||^2 + c^2) - c with c = huber_c sqrt(dim)."""
  flat = jnp.reshape(diff, (diff.shape[0], -1))
  if kind == "l2":
    return jnp.mean(flat**2, axis=1)
  if kind == "l1":
    return jnp.mean(jnp.abs(flat), axis=1)
  if kind == "pseudo_huber":
    c = huber_c * math.sqrt(flat.shape[1])
    # With c = 0 (ECT) the norm's gradient at exactly 0 would be NaN; a 1e-20 floor changes nothing else.
    return jnp.sqrt(jnp.sum(flat**2, axis=1) + max(c * c, 1e-20)) - c
  raise ValueError(f"distance must be 'l2', 'l1' or 'pseudo_huber'; got {kind!r}.")


def pair_weight(t, r, kind="uniform", sigma_data=0.5):
  if kind == "uniform":
    return jnp.ones_like(t)
  if kind == "inverse_gap":
    return 1.0 / (t - r)
  if kind == "edm":
    return (t**2 + sigma_data**2) / (t * sigma_data) ** 2
  raise ValueError(f"weighting must be 'uniform', 'inverse_gap' or 'edm'; got {kind!r}.")


def consistency_loss(apply_fn, params, target_params, x, labels, z, t, r, rng_dropout, *, teacher_fn=None,
                     solver="heun", distance_kind="l2", huber_c=0.0, weighting="uniform", sigma_data=0.5,
                     data_target_at_zero=False):
  """mean_b lambda(t, r) d(f(params; x + t z, t), sg[f(target; x_r, r)]); returns (loss, per-sample losses).

  x_r is one `teacher_fn(x, sigma)` ODE step from x_t = x + t z to r (distillation) or, without a teacher,
  x + r z with the same z (consistency training). target_params None: the online parameters under
  stop-gradient. Both calls in train mode with the same dropout key. data_target_at_zero (ECT): the target is
  x itself where r = 0, and non-finite targets are zeroed.
  """
  x_t = x + expand(t, x) * z
  if teacher_fn is None:
    x_r = x + expand(r, x) * z
  else:
    x_r = sg(ode_step(teacher_fn, x_t, t, r, solver))
  rngs = sc.dropout_rngs(rng_dropout)
  online = apply_fn(params, x_t, t, labels, train=True, rngs=rngs)
  target_params = params if target_params is None else target_params
  if data_target_at_zero:
    r_net = jnp.where(r > 0, r, 1.0)   # the network never sees sigma = 0 (its output is replaced by x there)
    target = jnp.nan_to_num(apply_fn(sg(target_params), x_r, r_net, labels, train=True, rngs=rngs))
    target = jnp.where(expand(r > 0, x), target, x)
  else:
    target = apply_fn(sg(target_params), x_r, r, labels, train=True, rngs=rngs)
  per_sample = pair_weight(t, r, weighting, sigma_data) * distance(online - sg(target), distance_kind, huber_c)
  return jnp.mean(per_sample), per_sample


# ------------------------------------------------------------------------------------------------------------
# The objectives.


def sample_sigmas(cfg, steps):
  """The multistep sampler's levels: the first `steps` of cfg.sample_sigmas, or for more steps the first
  `steps` levels of the (steps + 1)-point Karras grid (which ends at sigma_min, where f is the identity)."""
  listed = tuple(float(s) for s in cfg.sample_sigmas)
  if steps <= len(listed):
    return listed[:steps]
  return tuple(samplers.karras_sigma(i / steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)   # python floats: static
               for i in range(steps))


# Each method's noise levels: levels(cfg, total_steps, rng, step, n) -> (t [n], r [n], target EMA mu, info).


def _grid(cfg, idx, num_scales):
  return (karras_sigma(idx, num_scales, cfg.sigma_min, cfg.sigma_max, cfg.rho),
          karras_sigma(idx + 1, num_scales, cfg.sigma_min, cfg.sigma_max, cfg.rho))


def cd_levels(cfg, total_steps, rng, step, n):
  del total_steps, step
  num_scales = jnp.asarray(cfg.num_scales, jnp.int32)
  t, r = _grid(cfg, jax.random.randint(rng, (n,), 0, num_scales - 1), num_scales)
  return t, r, jnp.asarray(cfg.target_ema, jnp.float32), {"num_scales": num_scales}


def ct_levels(cfg, total_steps, rng, step, n):
  num_scales, mu = ct_schedule(step, total_steps, cfg.start_scales, cfg.end_scales, cfg.start_ema, cfg.paper_mu)
  t, r = _grid(cfg, jax.random.randint(rng, (n,), 0, num_scales - 1), num_scales)
  return t, r, mu, {"num_scales": num_scales}


def ict_levels(cfg, total_steps, rng, step, n):
  num_scales = ict_num_scales(step, total_steps, cfg.start_scales, cfg.end_scales)
  log_p = ict_pair_log_probs(num_scales, cfg.end_scales + 1, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.p_mean,
                             cfg.p_std)
  t, r = _grid(cfg, jax.random.categorical(rng, log_p, shape=(n,)), num_scales)
  return t, r, jnp.zeros((), jnp.float32), {"num_scales": num_scales}


def ect_levels(cfg, total_steps, rng, step, n):
  del total_steps
  t = jnp.exp(cfg.p_mean + cfg.p_std * jax.random.normal(rng, (n,)))
  stage = ect_stage(step, cfg.stage_steps)
  return t, ect_r(t, stage, cfg.q, cfg.k, cfg.b), jnp.zeros((), jnp.float32), {"stage": stage}


@dataclasses.dataclass(frozen=True)
class Method:
  """What distinguishes the four methods; everything else is shared."""
  levels: Callable                      # see cd_levels
  target: Callable                      # cfg -> 'online' (sg[theta]) | 'ema' (target_ema) | 'adaptive' (ct's mu(k))
  distils: bool = False                 # x_r from a teacher ODE step (cd), else x + r z with the same z
  data_target_at_zero: bool = False     # ect: the target is x where r = 0
  renoise_min: Callable = lambda cfg: cfg.sigma_min                  # the multistep sampler's re-noising floor
  train_preconditioning: Callable = lambda cfg: "consistency"        # the coefficients while training
  total_steps: Callable = lambda cfg, num_steps: num_steps           # K of a curriculum


_CURRICULUM_STEPS = lambda cfg, num_steps: int(cfg.total_steps or num_steps)   # total_steps 0 = the run's length
METHOD_TABLE = {
    "cd": Method(cd_levels, target=lambda cfg: cfg.target, distils=True),
    "ct": Method(ct_levels, target=lambda cfg: "adaptive", total_steps=_CURRICULUM_STEPS),
    "ict": Method(ict_levels, target=lambda cfg: "online", total_steps=_CURRICULUM_STEPS),
    "ect": Method(ect_levels, target=lambda cfg: "online", data_target_at_zero=True, renoise_min=lambda cfg: 0.0,
                  train_preconditioning=lambda cfg: cfg.train_preconditioning),
}


def _build(cfg, networks, spec, run: base.RunFacts, name: str) -> base.Objective:
  method = METHOD_TABLE[name]
  network = networks[G]
  sigma_data = network.sigma_data
  sample_apply = preconditioned_apply_fn(network, "consistency", sigma_data, cfg.sigma_min)
  train_kind = method.train_preconditioning(cfg)
  train_apply = (sample_apply if train_kind == "consistency"
                 else preconditioned_apply_fn(network, train_kind, sigma_data, cfg.sigma_min))
  tx = state_lib.make_optimizer(cfg.optimizer)
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  total_steps = method.total_steps(cfg, run.num_steps)
  target_mode = method.target(cfg)
  if target_mode not in ("online", "ema", "adaptive"):
    raise ValueError(f"objective.{name}.target must be 'online' or 'ema'; got {target_mode!r}.")
  keeps_target = target_mode != "online"
  solver = cfg.solver if method.distils else None
  renoise_min = method.renoise_min(cfg)
  # Validate the static switches once, at build time.
  distance(jnp.zeros((1, 1)), cfg.distance, cfg.huber_c)
  pair_weight(jnp.ones(1), jnp.zeros(1), cfg.weighting, sigma_data)

  def init(rng, batch, teacher=None):
    x, labels = base.batch_inputs(batch, spec)
    rng_net, state_rng = jax.random.split(rng)
    params, _ = sc.init_from_teacher(network, rng_net, x, labels, teacher, cfg.init)
    extra = {TARGET: jax.tree.map(jnp.copy, params)} if keeps_target else {}
    return state_lib.create(state_rng, {G: params}, {G: tx}, ema_roles=(G,), extra=extra)

  def loss_fn(params, mb, rng_dropout, target_params, teacher):
    teacher_fn = None
    if method.distils:
      teacher_fn = lambda y, s: teacher.apply_fn(teacher.params, y, s, mb["labels"])
    return consistency_loss(
        train_apply, params, target_params, mb["x"], mb["labels"], mb["z"], mb["t"], mb["r"], rng_dropout,
        teacher_fn=teacher_fn, solver=solver, distance_kind=cfg.distance, huber_c=cfg.huber_c,
        weighting=cfg.weighting, sigma_data=sigma_data, data_target_at_zero=method.data_target_at_zero)[0]

  def train_step(state, batch, teacher=None):
    if method.distils and teacher is None:
      raise ValueError("Consistency distillation needs a teacher (config.teacher).")
    x, labels = base.batch_inputs(batch, spec)
    (rng,) = state.step_rng(G)
    rng_levels, rng_z, rng_dropout = jax.random.split(rng, 3)
    # Per-example randomness for the whole batch first, so that micro-batching leaves the draws unchanged.
    t, r, mu, info = method.levels(cfg, total_steps, rng_levels, state.step, x.shape[0])
    mb = dict(x=x, labels=labels, z=jax.random.normal(rng_z, x.shape, x.dtype), t=t, r=r)
    target_params = state.extra[TARGET] if keeps_target else None
    loss, grads = accumulate_gradients(loss_fn, state.params[G], mb, rng_dropout, target_params,
                                       teacher if method.distils else None, num_microbatches=run.microbatches)
    state, metrics = state_lib.apply_gradients(state, G, grads, tx)
    new = state.params[G]
    extra = dict(state.extra)
    if keeps_target:
      extra[TARGET] = state_lib.ema_update(extra[TARGET], new, mu)
    decay = ema_decay(state.step)
    state = state.replace(step=state.step + 1, extra=extra,
                          ema={**state.ema, G: state_lib.ema_update(state.ema[G], new, decay)})
    metrics.update({f"{G}/loss": loss, f"{G}/ema_decay": decay, f"{G}/t_mean": jnp.mean(t),
                    **{f"{G}/{k}": v for k, v in info.items()}})
    if keeps_target:
      metrics[f"{G}/target_ema"] = mu
    return state, metrics

  def sample(state, rng, num, labels=None, steps=None):
    """Multistep consistency sampling with the EMA network (one step by default)."""
    rng_labels, rng_z, rng_steps = jax.random.split(rng, 3)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    z = jax.random.normal(rng_z, (num,) + tuple(spec.shape))
    fn = lambda x, s: sample_apply(state.ema[G], x, s, onehot)
    return samplers.consistency_sampler(fn, z, sample_sigmas(cfg, steps or 1), rng_steps, renoise_min)

  return base.Objective(name=name, init=init, train_step=train_step, sample=sample, export_role=G,
                        apply_fn=sample_apply, accumulates_gradients=True)


ROLES = {G: "denoiser"}
for _name, _default in (("cd", cd_config), ("ct", ct_config), ("ict", ict_config), ("ect", ect_config)):
  register(_name, _default, ROLES)(functools.partial(_build, name=_name))
