"""`sim`: Score Implicit Matching (Luo, Huang, Geng, Kolter, Qi, NeurIPS 2024).

Networks as SiD (gendistill.objectives.sid): teacher f_phi (frozen), fake score f_psi and one-step generator
G_theta = G(sigma_init z; sigma_init, c), both students from the teacher's parameters when they match. Each
train_step is one fake-score step (EDM's loss on sg[G(z)], exactly SiD's) then one generator step.

The divergence. With x_t = x_0 + sigma eps, x_0 = G_theta(z), and a distance d on score differences,
  D(theta) = int w(t) E_{x_t ~ pi_t} d(s_p(x_t) - s_q_theta(x_t)) dt,
where pi_t is the generator's own diffused distribution held fixed (sg[theta]). The score-gradient theorem
(integration by parts, then the denoising identity E_{x_t|x_0}[div u] = -E[u . grad log q(x_t|x_0)]) gives

  grad D = grad_theta E[ u(x_t)^T (s_q(x_t) - grad_{x_t} log q(x_t | x_0)) ],    u = d'(s_p - s_q),

where the expectation is over z and eps with x_t = G_theta(z) + sigma eps, and u and s_q are fixed FUNCTIONS
(the fake score's parameters are frozen), but the gradient flows through their input x_t and through x_0. The
intractable score s_q_theta is replaced by the fake score f_psi. In denoiser units (s = (D - x_t)/sigma^2,
grad log q(x_t|x_0) = (x_0 - x_t)/sigma^2) and with d measured on the denoiser difference (d(sigma^2 y), i.e. the
weight w(t) absorbs the sigma^2 factors, which cancel exactly), the per-sample generator loss is

  L_theta = < d'(f_phi(x_t) - f_psi(x_t)),  f_psi(x_t) - x_g >      (nothing stop-gradiented but psi),

optionally divided by SiD's normaliser sg[mean_pix |x_g - f_phi(x_t)|] (`normalizer='sid'`).
- d = ||.||^2 (`distance='l2'`): d'(Delta) = 2 Delta, so L = 2 (f_phi - f_psi)^T (f_psi - x_g): twice SiD's loss
  with alpha = 1, gradient included (SiD is the L2 special case of SIM, as the paper says; tested).
- d = pseudo-Huber (`distance='pseudo_huber'`, the paper's choice): d(y) = sqrt(||y||^2 + c^2) - c,
  d'(y) = y / sqrt(||y||^2 + c^2): the teacher-fake difference is normalised by its own norm, which bounds the
  loss where the two scores are far apart. c = huber_c sqrt(dim), in denoiser units.
The generator loss's sigma follows SiD (uniform in Karras rho-space up to t_max/1000).

Paper vs this code: no official SIM training code was available to compare against, so the defaults are SiD's
CIFAR-10 settings (the paper's CIFAR-10 runs build on SiD's setup) and c is this library's choice. The gradient
estimator above is derived from the divergence and checked against the exact gradient of D on a Gaussian
(tests/test_sim.py), which fixes its sign and what is stop-gradiented (only psi).
"""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.objectives import base, register
from gendistill.objectives import score_common as sc

G, F = sc.GENERATOR, sc.FAKE_SCORE
DISTANCES = ("l2", "pseudo_huber")
NORMALIZERS = ("none", "sid")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      distance="pseudo_huber",  # l2 | pseudo_huber: d on the teacher - fake denoiser difference
      huber_c=0.03,             # pseudo-Huber c = huber_c * sqrt(dim) (denoiser units)
      normalizer="none",        # none | sid: divide each sample's loss by sg[mean_pix |x_g - f_phi(x_t)|]
      weight_min=1e-5,          # clip of SiD's normaliser
      sigma_init=2.5,           # generator input: G(sigma_init z; sigma_init)
      t_max=800,                # generator-loss noise, as SiD: u ~ U(0, t_max/1000) in Karras rho-space
      sigma_min=0.002,
      sigma_max=80.0,
      rho=7.0,
      p_mean=-1.2,              # fake-score loss noise: ln sigma ~ N(p_mean, p_std^2)
      p_std=1.2,
      generator_loss_scale=100.0,
      generator_dropout=True,   # G in train mode in its own update (as SiD)
      init="auto",              # auto | teacher | random
      nan_to_num=True,
      fake_score_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8),
      generator_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8),
      ema=state_lib.ema_config(halflife_kimg=500.0, rampup_ratio=0.05),
  ))


# ------------------------------------------------------------------------------------------------------------
# Pure losses.


def distance(y, kind="pseudo_huber", huber_c=0.03):
  """Per-sample d(y) of y [B, ...]: ||y||^2 ('l2') or sqrt(||y||^2 + c^2) - c with c = huber_c sqrt(dim)."""
  flat = jnp.reshape(y, (y.shape[0], -1))
  sq = jnp.sum(flat**2, axis=1)
  if kind == "l2":
    return sq
  if kind == "pseudo_huber":
    c = huber_c * math.sqrt(flat.shape[1])
    return jnp.sqrt(sq + c * c) - c
  raise ValueError(f"objective.sim.distance must be one of {DISTANCES}; got {kind!r}.")


def distance_grad(y, kind="pseudo_huber", huber_c=0.03):
  """d'(y), per sample (the gradient of d at each sample's y), differentiable in y."""
  return jax.grad(lambda v: jnp.sum(distance(v, kind, huber_c)))(y)


def sim_loss_terms(x_g, y_r, y_f, *, kind="pseudo_huber", huber_c=0.03, normalizer="none", weight_min=1e-5):
  """Per-sample SIM generator loss <d'(y_r - y_f), y_f - x_g> (optionally / SiD's w); non-finite samples give 0.

  y_r, y_f: teacher and fake-score denoiser outputs at x_t = x_g + sigma n, both still functions of x_g (the
  gradient goes through them). Returns (per_sample [B], w [B])."""
  u = distance_grad(y_r - y_f, kind, huber_c)
  per_sample = sc.per_sample_sum(u * (y_f - x_g))
  if normalizer == "sid":
    w = sc.sg(jnp.maximum(sc.per_sample_mean(jnp.abs(x_g - y_r)), weight_min))
  elif normalizer == "none":
    w = jnp.ones_like(per_sample)
  else:
    raise ValueError(f"objective.sim.normalizer must be one of {NORMALIZERS}; got {normalizer!r}.")
  ok = sc.finite_rows(x_g, y_r, y_f)
  return jnp.where(ok, per_sample / w, 0.0), w


def sim_generator_objective(x_g, sigma, noise, real_fn, fake_fn, **kwargs):
  """SIM's generator loss of generated samples x_g: x_t = x_g + sigma n (not stop-gradiented), y = fn(x_t, sigma).
  real_fn/fake_fn have their parameters bound. Returns (per_sample [B], w [B])."""
  x_t = x_g + sc.expand(sigma, x_g) * noise
  return sim_loss_terms(x_g, real_fn(x_t, sigma), fake_fn(x_t, sigma), **kwargs)


# ------------------------------------------------------------------------------------------------------------
# The objective.


ROLES = {G: "denoiser", F: "denoiser"}


@register("sim", default_config, ROLES)
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  if cfg.distance not in DISTANCES:
    raise ValueError(f"objective.sim.distance must be one of {DISTANCES}; got {cfg.distance!r}.")
  if cfg.normalizer not in NORMALIZERS:
    raise ValueError(f"objective.sim.normalizer must be one of {NORMALIZERS}; got {cfg.normalizer!r}.")
  net_g, net_f = networks[G], networks[F]
  apply_g, apply_f = net_g.apply, net_f.apply
  tx = {G: state_lib.make_optimizer(cfg.generator_optimizer), F: state_lib.make_optimizer(cfg.fake_score_optimizer)}
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  sigma_data = net_f.sigma_data
  loss_kwargs = dict(kind=cfg.distance, huber_c=cfg.huber_c, normalizer=cfg.normalizer, weight_min=cfg.weight_min)

  init = sc.generator_and_fake_score_init(net_g, net_f, spec, tx, cfg.init)

  def fake_loss(params_f, params_g, labels, rng, *, shape):
    loss = sc.fake_score_loss(apply_g, apply_f, params_f, params_g, labels, rng, shape=shape,
                              sigma_init=cfg.sigma_init, p_mean=cfg.p_mean, p_std=cfg.p_std, sigma_data=sigma_data)
    return loss, {f"{F}/denoising_loss": loss}

  def generator_loss(params_g, params_f, teacher, labels, rng, *, shape):
    x_g, sigma, noise = sc.generator_draw(apply_g, params_g, labels, jax.random.split(rng, 4), shape, cfg)
    real_fn = lambda x, s: teacher.apply_fn(teacher.params, x, s, labels)
    fake_fn = lambda x, s: apply_f(params_f, x, s, labels)
    per_sample, w = sim_generator_objective(x_g, sigma, noise, real_fn, fake_fn, **loss_kwargs)
    loss = cfg.generator_loss_scale * jnp.mean(per_sample)
    return loss, {f"{G}/weight": jnp.mean(w), f"{G}/sample_std": jnp.std(x_g)}

  def train_step(state, batch, teacher):
    x_real, labels = base.batch_inputs(batch, spec)
    rng_f, rng_g = state.step_rng(F, G)
    (loss_f, aux_f), grads_f = jax.value_and_grad(functools.partial(fake_loss, shape=x_real.shape), has_aux=True)(
        state.params[F], state.params[G], labels, rng_f)
    state, metrics_f = sc.sanitised_update(state, F, grads_f, tx[F], cfg.nan_to_num)
    (loss_g, aux_g), grads_g = jax.value_and_grad(functools.partial(generator_loss, shape=x_real.shape),
                                                  has_aux=True)(state.params[G], state.params[F], teacher, labels,
                                                                rng_g)
    state, metrics_g = sc.sanitised_update(state, G, grads_g, tx[G], cfg.nan_to_num)
    state, decay = sc.step_ema(state, ema_decay)
    state = state.replace(step=state.step + 1)
    return state, {f"{F}/loss": loss_f, f"{G}/loss": loss_g, f"{G}/ema_decay": decay, **aux_f, **aux_g,
                   **metrics_f, **metrics_g}

  return base.Objective(name="sim", init=init, train_step=train_step,
                        sample=sc.make_sampler(apply_g, spec, cfg.sigma_init), export_role=G, apply_fn=apply_g)
