"""`add`: Adversarial Diffusion Distillation (Sauer et al. 2023; docs/objectives/gan_and_ign.md) [paper; no official code].

Roles 'generator' (the student, started from the teacher's parameters when their trees match) and 'critic'; the
frozen teacher is the `teacher` argument of train_step.

Student input. ADD feeds the student noised REAL data, x_s = alpha_s x0 + sigma_s eps (VP), s uniform in
{999, 749, 499, 249}. In this library's EDM convention (x_sigma = x0 + sigma n) the same input is x_s / alpha_s =
x0 + (sigma_s / alpha_s) eps, i.e. EDM noise level sigma = sigma_s / alpha_s = sqrt(1/alpha_bar_s - 1). The VP/DDPM
schedule is EDM's continuous VP schedule (beta_min 0.1, beta_d 19.9: the limit of DDPM's linear 1e-4..2e-2 over
1000 steps), evaluated at t = (s + 1) / 1000 (`precond.vp_sigma`): s = 999, 749, 499, 249 -> sigma = 152.2, 17.02,
3.41, 0.954. Noise levels above `sigma_max` (80, the range EDM teachers are trained and sampled on) are clipped to
it, so the student's levels are (80, 17.02, 3.41, 0.954), and one-step sampling is G(80 z; 80) exactly as in the
other one-step objectives. `student_sigmas` overrides the mapped levels. `top_level_noise_only` feeds the top level
sigma_0 eps alone, the input one-step sampling gives it: at DDPM's t = 999 ADD's input is pure noise to within
sqrt(alpha_bar) = 0.007 of x0, which this keeps true when the top level is set low (a student from random weights
starts collapsed at sigma 80, see gendistill/objectives/adversarial.py, and not at sigma 1).

One train_step (critic every step, generator on every `critic_steps`-th step, as in `adversarial`):
  critic:    hinge L_D = mean relu(1 - D(x0)) + mean relu(1 + D(sg[x_hat])) + R1 (gamma 1e-5) on x0;
  generator: x_hat = G(x0 + sigma_s eps; sigma_s, c);
             L_adv = -mean D(x_hat);
             L_dist = mean_b c(t_b) mean_pix (x_hat - sg[teacher(sg[x_hat] + sigma_t eps'; sigma_t, c)])^2,
             sigma_t = vp_sigma(t) with t ~ U(dist_t_min, dist_t_max) clipped to [sigma_min, sigma_max]
             (ADD draws the teacher's timestep uniformly over the DDPM steps), c(t) = alpha_t = 1/sqrt(1 + sigma_t^2)
             (ADD's default weighting; `dist_weighting='none'` for c = 1);
             L_G = L_adv + 2.5 L_dist.
The squared distance is a per-sample mean over pixels (ADD gives no reduction; this keeps L_dist on the scale of
the hinge loss at any resolution). The paper's discriminator is a frozen DINO feature network with trainable
heads; here the critic is one of `gendistill.nets.discriminator`'s (class-conditional by projection), with the
shared pieces of `gendistill.objectives.gan` (hinge, R1, optional Diffusion-GAN instance noise).
Sampling: `steps` = k <= 4 runs the student on the first k of its levels, re-noising x_hat with fresh noise in
between (ADD's multi-step sampling).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gendistill import state as state_lib
from gendistill.diffusion import precond
from gendistill.nets import discriminator
from gendistill.objectives import adversarial, base, gan, register
from gendistill.objectives import score_common as sc

G, C = sc.GENERATOR, sc.CRITIC
ADD_TIMESTEPS = (999, 749, 499, 249)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      student_timesteps=ADD_TIMESTEPS,  # DDPM timesteps of the student's inputs, mapped to EDM sigmas
      student_sigmas=(),        # overrides the mapped levels when not empty (decreasing)
      top_level_noise_only=False,  # the top level's training input is sigma eps alone, as one-step sampling feeds it
      sigma_min=0.002,
      sigma_max=80.0,
      lambda_dist=2.5,          # L_G = L_adv + lambda_dist L_dist
      dist_t_min=0.0,           # teacher timestep t ~ U(dist_t_min, dist_t_max) (fractions of the 1000 steps)
      dist_t_max=1.0,
      dist_weighting="alpha",   # alpha (c(t) = alpha_t) | none
      loss="hinge",             # the critic's loss (ADD: hinge)
      critic_steps=1,
      r1_gamma=1e-5,
      r1_every=1,
      init="auto",              # auto | teacher | random: the student from the teacher's params
      instance_noise=gan.instance_noise_config("none"),
      critic=discriminator.critic_config(),
      generator_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.99),
      critic_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.99),
      ema=state_lib.ema_config(halflife_kimg=0.0, decay=0.999),
  ))


def student_sigmas(cfg) -> tuple:
  """The student's EDM noise levels: vp_sigma((s + 1) / 1000) for the DDPM timesteps s, clipped to sigma_max."""
  if len(cfg.student_sigmas):
    return tuple(float(s) for s in cfg.student_sigmas)
  t = (np.asarray(cfg.student_timesteps, np.float64) + 1) / 1000.0
  sigma = np.sqrt(np.exp(0.5 * precond.VP_BETA_D * t**2 + precond.VP_BETA_MIN * t) - 1)
  return tuple(float(s) for s in np.clip(sigma, cfg.sigma_min, cfg.sigma_max))


def noised_input(rng, x0, *, sigmas, top_level_noise_only=False):
  """The student's training input x0 + sigma eps at a level drawn uniformly from `sigmas`; sigma eps alone at the
  top level when `top_level_noise_only`. Returns (input, sigma)."""
  rng_s, rng_eps = jax.random.split(rng)
  level = jax.random.randint(rng_s, (x0.shape[0],), 0, len(sigmas))
  sigma = jnp.asarray(sigmas, jnp.float32)[level]
  signal = x0 * sc.expand(level > 0, x0) if top_level_noise_only else x0
  return signal + sc.expand(sigma, x0) * jax.random.normal(rng_eps, x0.shape), sigma


def distillation_loss(x_hat, teacher_fn, rng, labels, *, t_min=0.0, t_max=1.0, sigma_min=0.002, sigma_max=80.0,
                      weighting="alpha"):
  """ADD's score-distillation term: mean_b c(t_b) mean_pix (x_hat - sg[teacher(sg[x_hat] + sigma_t eps)])^2.

  teacher_fn(x, sigma, labels) -> denoised. Returns (loss, sigma_t).
  """
  rng_t, rng_eps = jax.random.split(rng)
  n = x_hat.shape[0]
  t = jax.random.uniform(rng_t, (n,), minval=t_min, maxval=t_max)
  sigma = jnp.clip(precond.vp_sigma(t), sigma_min, sigma_max)
  x_t = jax.lax.stop_gradient(x_hat) + sc.expand(sigma, x_hat) * jax.random.normal(rng_eps, x_hat.shape)
  target = jax.lax.stop_gradient(teacher_fn(x_t, sigma, labels))
  if weighting == "alpha":
    weight = 1.0 / jnp.sqrt(1.0 + sigma**2)
  elif weighting == "none":
    weight = jnp.ones_like(sigma)
  else:
    raise ValueError(f"Unknown dist_weighting {weighting!r}; expected 'alpha' or 'none'.")
  return jnp.mean(weight * sc.per_sample_mean((x_hat - target) ** 2)), sigma


@register("add", default_config, adversarial.ROLES)
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  if cfg.loss not in gan.LOSSES:
    raise ValueError(f"Unknown objective.add.loss {cfg.loss!r}; expected one of {gan.LOSSES}.")
  net, critic = networks[G], networks[C]
  apply_fn = net.apply
  tx_g = state_lib.make_optimizer(cfg.generator_optimizer)
  tx_c = state_lib.make_optimizer(cfg.critic_optimizer)
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  sigmas = student_sigmas(cfg)
  student_input = functools.partial(noised_input, sigmas=sigmas, top_level_noise_only=cfg.top_level_noise_only)

  def init(rng, batch, teacher=None):
    return adversarial.init_state(rng, batch, teacher, spec=spec, net=net, critic=critic, cfg=cfg, tx_g=tx_g,
                                  tx_c=tx_c)

  def train_step(state, batch, teacher):
    if teacher is None:
      raise ValueError("The add objective needs a teacher (config.teacher).")
    x0, labels = base.batch_inputs(batch, spec)
    rng_in, rng_critic, rng_gin, rng_gnoise, rng_dist, rng_drop = state.step_rng(
        "input", "critic", "gen_input", "gen_noise", "dist", "dropout")
    x_s, sigma_s = student_input(rng_in, x0)
    x_hat = apply_fn(state.params[G], x_s, sigma_s, labels)
    state, metrics = adversarial.critic_update(state, critic, tx_c, x0, x_hat, labels, rng_critic, cfg=cfg,
                                               batch_size=run.batch_size)
    p = state.extra.get("diffusion_p", jnp.zeros((), jnp.float32))
    teacher_fn = lambda x, sigma, labels: teacher(x, sigma, labels)

    def loss_fn(params_g):
      x_s, sigma_s = student_input(rng_gin, x0)
      x_hat = apply_fn(params_g, x_s, sigma_s, labels, train=True, rngs=sc.dropout_rngs(rng_drop))
      adv, _ = adversarial.generator_adversarial_loss(critic, state.params[C], x_hat, labels, rng_gnoise, p, cfg=cfg)
      dist, _ = distillation_loss(x_hat, teacher_fn, rng_dist, labels, t_min=cfg.dist_t_min, t_max=cfg.dist_t_max,
                                  sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, weighting=cfg.dist_weighting)
      return adv + cfg.lambda_dist * dist, {f"{G}/loss_adv": adv, f"{G}/loss_dist": dist}

    state, g_metrics = adversarial.gated_generator_update(
        state, adversarial.generator_turn(state.step, cfg.critic_steps), loss_fn, tx_g, ema_decay,
        (f"{G}/loss_adv", f"{G}/loss_dist"))
    return state.replace(step=state.step + 1), {**metrics, **g_metrics}

  return base.Objective(name="add", init=init, train_step=train_step,
                        sample=sc.make_sampler(apply_fn, spec, sigmas=sigmas), export_role=G, apply_fn=apply_fn)


__all__ = ["default_config", "build", "student_sigmas", "noised_input", "distillation_loss", "ADD_TIMESTEPS"]
