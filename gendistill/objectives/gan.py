"""Adversarial pieces shared by every objective with a critic: `adversarial` (a GAN on its own), `add`, and the
add-on GAN terms of SiDA and DMD2 (docs/objectives/score_distillation.md, gan_and_ign.md). Pure functions of arrays; no module state.

API (logits are per-sample arrays [N] (or any shape: every loss is a mean over all elements); losses are scalars):

  Losses
    ns_generator_loss(fake_logits)                     mean softplus(-D(G(z)))               (non-saturating)
    ns_discriminator_loss(real_logits, fake_logits)    mean softplus(-D(x)) + mean softplus(D(G(z)))
    hinge_generator_loss(fake_logits)                  -mean D(G(z))
    hinge_discriminator_loss(real_logits, fake_logits) mean relu(1 - D(x)) + mean relu(1 + D(G(z)))
    generator_loss(kind, fake_logits)                  kind in LOSSES = ('ns', 'hinge')
    discriminator_loss(kind, real_logits, fake_logits)

  R1 gradient penalty (Mescheder et al. 2018), on real data only
    r1_per_sample(logits_fn, real)                     ||d D(x_i) / d x_i||^2 for each sample, [N]
    r1_penalty(logits_fn, real, gamma)                 gamma / 2 * mean_i ||d D(x_i) / d x_i||^2
    lazy_r1_penalty(logits_fn, real, gamma, every, step)
                                                       every * r1_penalty when step % every == 0, else 0: lazy
                                                       regularisation (StyleGAN2), the same expected gradient at
                                                       1/every of the cost (the other steps skip the computation)
    `logits_fn(x) -> [N]` closes over the critic's params and its conditioning (labels, noise level). Per-sample
    norms use the gradient of sum_i D(x_i), which equals the per-sample gradients as long as the critic treats
    samples independently (no batch statistics). Taking jax.grad of the penalty w.r.t. the critic's params
    differentiates through the input gradient (double backprop), as R1 needs.

  Critic objective in one call
    discriminator_objective(logits_fn, real, fake, *, kind, r1_gamma=0., r1_every=1, step=0)
                                                       -> (loss, metrics): the loss of `kind` plus the lazy R1;
                                                       metrics: critic/loss_adv, critic/r1, critic/real_logits,
                                                       critic/fake_logits, critic/real_acc (fraction D(x) > 0),
                                                       critic/fake_acc (fraction D(G(z)) < 0), critic/real_sign
                                                       (mean sign D(x), Diffusion-GAN's r_d).
    logit_metrics(real_logits, fake_logits, prefix='critic')

  Diffusion-GAN instance noise (Wang et al. 2023; official code `diffusion-stylegan2/training/diffusion.py`)
    instance_noise_config()                            the config section (kind 'none' | 'diffusion' and its knobs)
    diffusion_num_steps(p, t_min, t_max)               T = clip(t_min + round(p (t_max - t_min)), t_min, t_max)
    diffusion_alpha_bar(t, T, beta_start, beta_end, t_max)
                                                       prod_{i<=t} (1 - beta_i), beta linear over T steps
    sample_diffusion_t(rng, n, T, t_max, dist)         t = 0 for half the samples, else t in {1..T} with
                                                       P(t) ∝ t - 1 ('priority') or uniform
    diffuse(rng, x, p, cfg) -> (y, t)                  y = sqrt(abar_t) x + sqrt(1 - abar_t) noise_std eps
    update_diffusion_p(p, real_sign, step, cfg, batch_size)
                                                       every ada_interval steps: p += sign(mean sign D(x) - target)
                                                       * batch * interval / (ada_kimg * 1000), clipped to [0, 1]
    The critic sees (y, t) and should be conditioned on t (the networks in gendistill.nets.discriminator take
    `noise_labels`). With kind 'none', `diffuse` returns (x, zeros).

Networks live in `gendistill.nets.discriminator` (MLPCritic, ConvCritic, `build_critic(cfg, spec)`, and DMD2's
BottleneckHead for a UNet's `return_features`). A whole critic optimizer step with instance noise, lazy R1 and the
Diffusion-GAN p update is `gendistill.objectives.adversarial.critic_update`.
"""
import jax
import jax.numpy as jnp
import ml_collections

LOSSES = ("ns", "hinge")


# ----------------------------------------------------------------------------------------------------------
# Losses.


def ns_generator_loss(fake_logits):
  return jnp.mean(jax.nn.softplus(-fake_logits))


def ns_discriminator_loss(real_logits, fake_logits):
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def hinge_generator_loss(fake_logits):
  return -jnp.mean(fake_logits)


def hinge_discriminator_loss(real_logits, fake_logits):
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def _check_kind(kind):
  if kind not in LOSSES:
    raise ValueError(f"Unknown GAN loss {kind!r}; expected one of {LOSSES}.")


def generator_loss(kind: str, fake_logits):
  _check_kind(kind)
  return ns_generator_loss(fake_logits) if kind == "ns" else hinge_generator_loss(fake_logits)


def discriminator_loss(kind: str, real_logits, fake_logits):
  _check_kind(kind)
  if kind == "ns":
    return ns_discriminator_loss(real_logits, fake_logits)
  return hinge_discriminator_loss(real_logits, fake_logits)


# ----------------------------------------------------------------------------------------------------------
# R1.


def r1_per_sample(logits_fn, real):
  """||grad_x D(x_i)||^2 per sample, [N]."""
  grads = jax.grad(lambda x: jnp.sum(logits_fn(x)))(real)
  return jnp.sum(jnp.reshape(grads.astype(jnp.float32) ** 2, (real.shape[0], -1)), axis=1)


def r1_penalty(logits_fn, real, gamma):
  """gamma / 2 * E ||grad_x D(x)||^2."""
  return 0.5 * gamma * jnp.mean(r1_per_sample(logits_fn, real))


def lazy_r1_penalty(logits_fn, real, gamma, every: int = 1, step=0):
  """R1 applied every `every` steps and scaled by `every`; 0 (and no computation) on the other steps."""
  if gamma == 0:
    return jnp.zeros((), jnp.float32)
  if every <= 1:
    return r1_penalty(logits_fn, real, gamma)
  return jax.lax.cond(jnp.asarray(step) % every == 0,
                      lambda: every * r1_penalty(logits_fn, real, gamma),
                      lambda: jnp.zeros((), jnp.float32))


# ----------------------------------------------------------------------------------------------------------
# The critic's objective.


def logit_metrics(real_logits, fake_logits, prefix: str = "critic"):
  return {f"{prefix}/real_logits": jnp.mean(real_logits), f"{prefix}/fake_logits": jnp.mean(fake_logits),
          f"{prefix}/real_acc": jnp.mean((real_logits > 0).astype(jnp.float32)),
          f"{prefix}/fake_acc": jnp.mean((fake_logits < 0).astype(jnp.float32)),
          f"{prefix}/real_sign": jnp.mean(jnp.sign(real_logits))}


def discriminator_objective(logits_fn, real, fake, *, kind: str, r1_gamma: float = 0.0, r1_every: int = 1,
                            step=0, fake_logits_fn=None, prefix: str = "critic"):
  """The critic's loss on real and (detached by the caller) fake inputs, plus the lazy R1 on the real ones.

  `fake_logits_fn` (default `logits_fn`) lets real and fake use different conditioning (labels, noise levels).
  Returns (loss, metrics).
  """
  real_logits = logits_fn(real)
  fake_logits = (fake_logits_fn or logits_fn)(fake)
  adv = discriminator_loss(kind, real_logits, fake_logits)
  r1 = lazy_r1_penalty(logits_fn, real, r1_gamma, r1_every, step)
  metrics = {f"{prefix}/loss_adv": adv, f"{prefix}/r1": r1, **logit_metrics(real_logits, fake_logits, prefix)}
  return adv + r1, metrics


# ----------------------------------------------------------------------------------------------------------
# Diffusion-GAN instance noise.


def instance_noise_config(kind: str = "none") -> ml_collections.ConfigDict:
  """Diffusion-GAN's defaults (official code): linear betas 1e-4..2e-2 stretched over T in [t_min, t_max] steps,
  noise std 0.05, 'priority' timesteps, T adapted so that mean sign D(x) tracks ada_target."""
  return ml_collections.ConfigDict(dict(
      kind=kind,            # none | diffusion
      t_min=10, t_max=1000,
      beta_start=1e-4, beta_end=2e-2,
      noise_std=0.05,
      t_dist="priority",    # priority (P(t) ∝ t - 1) | uniform
      p_init=0.0,           # initial p: T = t_min + p (t_max - t_min)
      ada_target=0.6,
      ada_interval=4,       # steps between updates of p
      ada_kimg=100,         # images for p to move from 0 to 1
  ))


def diffusion_num_steps(p, t_min: int, t_max: int):
  return jnp.clip(t_min + jnp.round(p * (t_max - t_min)), t_min, t_max).astype(jnp.int32)


def diffusion_alpha_bar(t, num_steps, beta_start: float, beta_end: float, t_max: int):
  """alpha_bar_t of a linear beta schedule over `num_steps` (traced) steps; alpha_bar_0 = 1. t: int [N].

  A table of cumulative log(1 - beta_i) over i <= t_max, then a gather: O(t_max + N).
  """
  i = jnp.arange(1, t_max + 1, dtype=jnp.float32)                          # step index 1..t_max
  frac = (i - 1) / jnp.maximum(num_steps - 1, 1).astype(jnp.float32)
  log_alpha = jnp.log1p(-(beta_start + frac * (beta_end - beta_start)))   # [t_max]
  table = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(log_alpha)])
  return jnp.exp(table[jnp.clip(jnp.asarray(t, jnp.int32), 0, t_max)])


def sample_diffusion_t(rng, n: int, num_steps, t_max: int, dist: str = "priority"):
  """Half the samples at t = 0 (clean), the others at t in {1..T}: P(t) ∝ t - 1 (priority) or uniform.

  The official code draws from a 64-entry table refreshed when T changes (32 zeros, 32 draws); this draws the
  same distribution directly, by inverting the CDF: priority has cumulative weight k (k - 1) / 2 up to k, so
  t = floor((1 + sqrt(1 + 8 r)) / 2) + 1 for r = u T (T - 1) / 2. `t_max` bounds T.
  """
  rng_zero, rng_t = jax.random.split(rng)
  num_steps = jnp.clip(jnp.asarray(num_steps, jnp.float32), 1, t_max)
  u = jax.random.uniform(rng_t, (n,))
  if dist == "priority":
    r = u * num_steps * (num_steps - 1) / 2
    t = jnp.floor((1 + jnp.sqrt(1 + 8 * r)) / 2) + 1
    t = jnp.where(num_steps > 1, t, 1.0)    # T = 1: only t = 1
  elif dist == "uniform":
    t = jnp.floor(u * num_steps) + 1
  else:
    raise ValueError(f"Unknown t_dist {dist!r}; expected 'priority' or 'uniform'.")
  t = jnp.clip(t, 1, num_steps).astype(jnp.int32)
  clean = jax.random.bernoulli(rng_zero, 0.5, (n,))
  return jnp.where(clean, 0, t)


def diffuse(rng, x, p, cfg: ml_collections.ConfigDict):
  """(y, t): x diffused for the critic, and the timesteps t (float [N], the critic's noise label)."""
  n = x.shape[0]
  if cfg.kind == "none":
    return x, jnp.zeros((n,), jnp.float32)
  if cfg.kind != "diffusion":
    raise ValueError(f"Unknown instance_noise.kind {cfg.kind!r}; expected 'none' or 'diffusion'.")
  rng_t, rng_eps = jax.random.split(rng)
  num_steps = diffusion_num_steps(p, cfg.t_min, cfg.t_max)
  t = sample_diffusion_t(rng_t, n, num_steps, cfg.t_max, cfg.t_dist)
  abar = diffusion_alpha_bar(t, num_steps, cfg.beta_start, cfg.beta_end, cfg.t_max)
  abar = jnp.reshape(abar, (n,) + (1,) * (x.ndim - 1))
  eps = jax.random.normal(rng_eps, x.shape, x.dtype)
  return jnp.sqrt(abar) * x + jnp.sqrt(1.0 - abar) * cfg.noise_std * eps, t.astype(jnp.float32)


def update_diffusion_p(p, real_sign, step, cfg: ml_collections.ConfigDict, batch_size: int):
  """Diffusion-GAN's adaptive T: on steps with step % ada_interval == 0 move p by sign(r_d - target) * C, with
  r_d = real_sign = mean sign D(x) (the `critic/real_sign` metric of `discriminator_objective`)."""
  if cfg.kind == "none":
    return p
  r_d = real_sign
  adjust = jnp.sign(r_d - cfg.ada_target) * (batch_size * cfg.ada_interval) / (cfg.ada_kimg * 1000.0)
  new_p = jnp.clip(p + adjust, 0.0, 1.0)
  return jnp.where(jnp.asarray(step) % cfg.ada_interval == 0, new_p, p).astype(jnp.float32)


__all__ = [
    "LOSSES", "ns_generator_loss", "ns_discriminator_loss", "hinge_generator_loss", "hinge_discriminator_loss",
    "generator_loss", "discriminator_loss", "r1_per_sample", "r1_penalty", "lazy_r1_penalty", "logit_metrics",
    "discriminator_objective", "instance_noise_config", "diffusion_num_steps", "diffusion_alpha_bar",
    "sample_diffusion_t", "diffuse", "update_diffusion_p",
]
