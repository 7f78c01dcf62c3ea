"""`diff_instruct`: Diff-Instruct (Luo et al., NeurIPS 2023) and VSD-style integral-KL distillation
(docs/objectives/score_distillation.md), as in the official Diff-Instruct code.

The integral KL D_IKL(q_theta || p) = int w(t) KL(q_theta,t || p_t) dt has the gradient
E[w(t) (s_q,t(x_t) - s_p,t(x_t))^T dx_g/dtheta], x_t = x_g + sigma n. In denoiser form (s = (D - x)/sigma^2):

  L_G = (1/B) sum_b sum_pix sg[c(sigma) (D_psi(x_t; sigma) - D_phi(x_t; sigma))] * x_g,

whose gradient w.r.t. x_g is c(sigma) (D_psi - D_phi): descending it moves x_g toward the teacher's denoised
estimate and away from the fake score's. Both network outputs are stop-gradiented (no gradient through their
inputs, unlike SiD). c(sigma) by `weighting`:
  'none' (Diff-Instruct): c = 1, i.e. w(sigma) = sigma^2 on the score difference;
  'vsd' (ProlificDreamer/SwiftBrush with omega = 1 on the eps difference): c = 1/sigma, since
        eps_phi - eps_psi = (D_psi - D_phi)/sigma for x_t = x + sigma eps;
  'dmd': c = 1/mean_pix |x_g - D_phi| (DMD's normaliser, per sample).
sigma ~ lognormal(p_mean, p_std) ('lognormal', Diff-Instruct) or SiD's uniform-in-rho-space ('sid').

Each train_step: one fake-score step (EDM loss on sg[G(z)] made with G in eval mode; f_psi in train mode), then
one generator step (G in train mode). Teacher and fake score run in train mode in the generator loss with the
SAME dropout key (official: torch RNG state saved and restored between the two calls), so with f_psi = f_phi
the gradient is exactly zero. Gradients through nan_to_num as the official code; Adam (0, 0.999), lr 1e-5,
sigma_init 1.0. The fake score is initialised from the teacher as everywhere here (the official code does the
same: both G and S_g start from the EDM checkpoint).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.objectives import base, gating, register
from gendistill.objectives import score_common as sc

G, F = sc.GENERATOR, sc.FAKE_SCORE
WEIGHTINGS = ("none", "vsd", "dmd")
SIGMAS = ("lognormal", "sid")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      sigma_init=1.0,           # generator input G(sigma_init z; sigma_init)
      weighting="none",         # none (Diff-Instruct) | vsd (1/sigma: omega = 1 on eps) | dmd (1/mean|x - D_phi|)
      generator_sigma="lognormal",  # lognormal | sid (uniform in Karras rho-space over [0, t_max/1000])
      p_mean=-1.2,              # lognormal noise of both losses
      p_std=1.2,
      t_max=800,                # generator_sigma='sid' only
      sigma_min=0.002,
      sigma_max=80.0,
      rho=7.0,
      networks_train_mode=True,  # teacher and fake score with dropout (shared key) in the generator loss
      generator_dropout=True,   # G in train mode in its own update
      fake_loss_scale=1.0,      # official --sgls
      generator_loss_scale=1.0,  # official --ls
      init="auto",              # auto | teacher | random
      generator_every=1,
      nan_to_num=True,
      fake_score_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8),
      generator_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8),
      ema=state_lib.ema_config(halflife_kimg=500.0, rampup_ratio=0.05),
  ))


def integral_kl_objective(x_g, sigma, noise, real_fn, fake_fn, *, weighting="none"):
  """Per-sample Diff-Instruct/VSD generator loss sum_pix sg[c(sigma) (D_psi - D_phi)(x_t)] * x_g.

  real_fn/fake_fn(x, sigma) are the teacher and the fake score with parameters (and dropout keys) bound.
  Non-finite samples give 0. Returns per_sample [B].
  """
  x_t = sc.sg(x_g) + sc.expand(sigma, x_g) * noise
  y_r, y_f = sc.sg(real_fn(x_t, sigma)), sc.sg(fake_fn(x_t, sigma))
  diff = y_f - y_r
  if weighting == "vsd":
    diff = diff / sc.expand(sigma, diff)
  elif weighting == "dmd":
    diff = diff / sc.expand(sc.per_sample_mean(jnp.abs(sc.sg(x_g) - y_r)), diff)
  elif weighting != "none":
    raise ValueError(f"Unknown weighting {weighting!r}; expected one of {WEIGHTINGS}.")
  per_sample = sc.per_sample_sum(sc.sg(diff) * x_g)
  return jnp.where(sc.finite_rows(diff), per_sample, 0.0)


@register("diff_instruct", default_config, {G: "denoiser", F: "denoiser"})
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  if cfg.weighting not in WEIGHTINGS:
    raise ValueError(f"objective.diff_instruct.weighting must be one of {WEIGHTINGS}; got {cfg.weighting!r}.")
  if cfg.generator_sigma not in SIGMAS:
    raise ValueError(f"objective.diff_instruct.generator_sigma must be one of {SIGMAS}; got {cfg.generator_sigma!r}.")
  net_g, net_f = networks[G], networks[F]
  apply_g, apply_f = net_g.apply, net_f.apply
  tx = {G: state_lib.make_optimizer(cfg.generator_optimizer), F: state_lib.make_optimizer(cfg.fake_score_optimizer)}
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  sigma_data = net_f.sigma_data

  init = sc.generator_and_fake_score_init(net_g, net_f, spec, tx, cfg.init)

  def fake_loss(params_f, params_g, labels, rng, *, shape):
    loss = sc.fake_score_loss(apply_g, apply_f, params_f, params_g, labels, rng, shape=shape,
                              sigma_init=cfg.sigma_init, p_mean=cfg.p_mean, p_std=cfg.p_std, sigma_data=sigma_data)
    return cfg.fake_loss_scale * loss, {}

  def generator_loss(params_g, params_f, teacher, labels, rng, *, shape):
    *keys, rng_drop = jax.random.split(rng, 5)
    x_g, sigma, noise = sc.generator_draw(apply_g, params_g, labels, keys, shape, cfg,
                                          sigma_kind=cfg.generator_sigma)
    kw = dict(train=cfg.networks_train_mode, rngs=sc.dropout_rngs(rng_drop))   # one dropout key for both
    real_fn = lambda x, s: teacher.apply_fn(teacher.params, x, s, labels, **kw)
    fake_fn = lambda x, s: apply_f(params_f, x, s, labels, **kw)
    per_sample = integral_kl_objective(x_g, sigma, noise, real_fn, fake_fn, weighting=cfg.weighting)
    return cfg.generator_loss_scale * jnp.mean(per_sample), {f"{G}/sample_std": jnp.std(x_g)}

  def train_step(state, batch, teacher):
    x, labels = base.batch_inputs(batch, spec)
    rng_f, rng_g = state.step_rng(F, G)
    (loss_f, _), grads_f = jax.value_and_grad(functools.partial(fake_loss, shape=x.shape), has_aux=True)(
        state.params[F], state.params[G], labels, rng_f)
    state, metrics_f = sc.sanitised_update(state, F, grads_f, tx[F], cfg.nan_to_num)
    update_g = gating.gate(state.step, cfg.generator_every)
    (loss_g, aux_g), grads_g = gating.value_and_grad(update_g, functools.partial(generator_loss, shape=x.shape),
                                                     state.params[G], state.params[F], teacher, labels, rng_g)
    state, metrics_g = sc.sanitised_update(state, G, grads_g, tx[G], cfg.nan_to_num, enabled=update_g.on)
    state, decay = sc.step_ema(state, ema_decay)
    state = state.replace(step=state.step + 1)
    return state, {f"{F}/loss": loss_f, f"{G}/loss": loss_g, f"{G}/updated": jnp.asarray(update_g.on, jnp.float32),
                   f"{G}/ema_decay": decay, **aux_g, **metrics_f, **metrics_g}

  return base.Objective(name="diff_instruct", init=init, train_step=train_step,
                        sample=sc.make_sampler(apply_g, spec, cfg.sigma_init), export_role=G, apply_fn=apply_g)
