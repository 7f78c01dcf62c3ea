"""`dmd` and `dmd2`: Distribution Matching Distillation (Yin et al., CVPR 2024) and DMD2 (Yin et al., NeurIPS
2024), following DMD2's official EDM code (docs/objectives/score_distillation.md). `fdistill` (fdistill.py) reuses this
builder with an f-divergence weight on the same gradient.

Networks: real score mu_real (the frozen teacher), fake score mu_fake and generator G, both started from the
teacher. G's one-step input is sigma_init z at sigma_init = 80 (the teacher's sigma_max).

Distribution matching (generator) loss, with the noise table the 1000-step Karras grid (0.002, 80, rho 7) in
ascending order and t ~ U{20..980}:
  x_t = x + sigma_t n;  g = (mu_fake(x_t) - mu_real(x_t)) / mean_pix |x - mu_real(x_t)|  (no gradient, nan_to_num)
  L_DM = 0.5 mean((x - sg[x - g])^2)        -> dL/dx = g / numel: toward mu_real, away from mu_fake.
Fake score loss: t ~ U{0..999}, L_fake = mean[(sigma^-2 + sigma_d^-2)(mu_fake(sg[x] + sigma n) - sg[x])^2]
(mean over all elements).

`dmd`: L_DM (+ lambda_reg times a regression loss on teacher ODE pairs, see below) and L_fake, one each per
step, generator first. The DMD paper's regression loss is LPIPS(G(z_ref), y_ref) on pairs from the teacher's
deterministic sampler; here the pairs come from this library's Heun sampler (config.sampler) at init, stored in
state.extra, and the distance is the per-sample mean squared error (no LPIPS network in this library; it is the
only difference from the paper). `regression_pairs` = 0 turns it off.

`dmd2` (official EDM ImageNet recipe): no regression; TTUR -- G updates on steps with step % 5 == 0, the fake
score and the classifier every step. On generator turns L_DM + 3e-3 L_G,adv is back-propagated, gradients
clipped to norm 10, G stepped; then the guidance step (L_fake + 1e-2 L_D) runs on the SAME detached samples made
before the generator update. The classifier is a head on the fake score's bottleneck features (role 'critic':
`BottleneckHead` for images, an `MLPCritic` on the features of a vector network); the fake score's encoder is
shared by the denoising loss and the classifier, so L_D trains both roles, and their gradients are clipped
jointly to norm 10 (one optimizer over both in the official code; here two optimizers with the same settings
after one joint clip). Classifier inputs x + sigma n with t ~ U{0..gan_max_timestep - 1} (the official
`--diffusion_gan --diffusion_gan_max_timestep 1000`), independent for real and fake;
L_D = mean softplus(D(fake)) + mean softplus(-D(real)), L_G,adv = mean softplus(-D(G(z))).
Generator labels are uniform random (official); real images keep their labels. AdamW (0.9, 0.999), wd 0.01,
lr 2e-6, 500-step warm-up counted in optimizer updates (so 100 for the generator at TTUR 5; the official
scheduler steps every iteration). No generator EMA in the official code: `ema.decay = 0` keeps the EMA equal
to the generator.

Few-step DMD2 (`denoising_timesteps`, e.g. (999, 749, 499, 249) on the ascending grid): the generator maps
(x at sigma_k) -> x0; training draws k ~ U{0..K-1} for the whole batch and, with `backward_simulation`, makes
the input by running G (no gradient) k steps from pure noise sigma_0 z with fresh noise between steps; k = 0 is
pure noise. Sampling runs all K steps (or `steps`).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.diffusion import losses
from gendistill.diffusion import samplers
from gendistill.diffusion.guidance import bind_denoiser
from gendistill.nets import discriminator
from gendistill.objectives import base, gan, gating, register
from gendistill.objectives import score_common as sc

G, F, C = sc.GENERATOR, sc.FAKE_SCORE, sc.CRITIC


def _adamw(lr=2e-6, warmup_steps=500, grad_clip_norm=0.0):
  return state_lib.optimizer_config(name="adamw", lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                                    warmup_steps=warmup_steps, grad_clip_norm=grad_clip_norm)


def default_config() -> ml_collections.ConfigDict:
  """`dmd`: distribution matching + optional regression, no TTUR, no GAN."""
  return ml_collections.ConfigDict(dict(
      sigma_init=80.0,          # one-step generator input G(sigma_init z; sigma_init)
      num_train_timesteps=1000,  # the Karras noise table
      min_step_percent=0.02,    # DM loss t ~ U{int(0.02 N) .. int(0.98 N)}
      max_step_percent=0.98,
      sigma_min=0.002,
      sigma_max=80.0,
      rho=7.0,
      dm_loss_scale=1.0,
      weight_min=0.0,           # clip of the normaliser mean_pix |x - mu_real| (official: none, 0)
      fake_loss_scale=1.0,
      networks_train_mode=False,  # teacher/fake score/classifier in the generator loss (official nets: no dropout)
      generator_dropout=True,   # G in train mode while it is trained and while it makes the fake score's samples
      generator_every=1,        # TTUR: G updates when step % generator_every == 0
      init="auto",              # auto | teacher | random
      regression_weight=0.25,   # DMD's lambda_reg (on the per-sample MSE to teacher ODE outputs)
      regression_pairs=0,       # teacher ODE pairs made at init (0: no regression loss)
      regression_batch_size=0,  # pairs per step (0: the data batch size)
      regression_chunk=256,     # pairs per teacher-sampler call at init
      guidance_clip_norm=10.0,  # joint grad-norm clip of the fake score (and classifier); 0 = none
      gan=False,                # classifier head on the fake score's bottleneck (dmd2)
      denoising_timesteps=(),   # few-step generator: indices into the ascending noise table, e.g. (999, 749, 499, 249)
      backward_simulation=False,  # a few-step generator's inputs by running it from noise (dmd2)
      generator_optimizer=_adamw(warmup_steps=500, grad_clip_norm=10.0),
      fake_score_optimizer=_adamw(warmup_steps=500),
      ema=state_lib.ema_config(halflife_kimg=0.0, rampup_ratio=0.05, decay=0.0),
  ))


def dmd2_default_config() -> ml_collections.ConfigDict:
  c = default_config()
  c.regression_pairs = 0
  c.regression_weight = 0.0
  c.generator_every = 5
  c.generator_optimizer.warmup_steps = 100
  c.update(dict(
      gan=True,                 # classifier head on the fake score's bottleneck
      gen_gan_weight=3e-3,      # official --gen_cls_loss_weight
      critic_loss_weight=1e-2,  # official --cls_loss_weight
      gan_noise=True,           # official --diffusion_gan: classifier inputs x + sigma_t n
      gan_max_timestep=1000,    # t ~ U{0 .. gan_max_timestep - 1}
      critic_optimizer=_adamw(warmup_steps=500),
      critic=discriminator.critic_config(hidden=256, depth=2),   # head on vector features (MLP networks)
  ))
  c.backward_simulation = True
  return c


# ------------------------------------------------------------------------------------------------------------
# Pure losses.


def dm_gradient(x, y_real, y_fake, weight_min=0.0):
  """g = (mu_fake - mu_real) / mean_pix |x - mu_real|, nan_to_num (official DMD2); the normaliser is clipped at
  `weight_min` when that is positive (the official code has no clip: 0)."""
  w = sc.per_sample_mean(jnp.abs(x - y_real))
  if weight_min > 0:
    w = jnp.maximum(w, weight_min)
  return jnp.nan_to_num((y_fake - y_real) / sc.expand(w, x))


def distribution_matching_loss(x, y_real, y_fake, weight=None, weight_min=0.0):
  """0.5 mean((x - sg[x - g])^2) with g from `dm_gradient` (no gradient through the network outputs), times a
  per-sample `weight` [B] on g if given (f-distill's h(r)). Its gradient w.r.t. x is weight * g / numel."""
  g = dm_gradient(sc.sg(x), sc.sg(y_real), sc.sg(y_fake), weight_min)
  if weight is not None:
    g = g * sc.expand(sc.sg(weight), g)
  return 0.5 * jnp.mean((x - sc.sg(x - g)) ** 2)


def dm_objective(x, sigma, noise, real_fn, fake_fn, weight=None, weight_min=0.0):
  """L_DM of generated x at noise level sigma [B] with noise n; real_fn/fake_fn(x, sigma) are mu_real/mu_fake."""
  x_t = sc.sg(x) + sc.expand(sigma, x) * noise
  return distribution_matching_loss(x, real_fn(x_t, sigma), fake_fn(x_t, sigma), weight, weight_min)


def dmd_fake_loss(apply_fn, params, x, labels, sigma, noise, *, sigma_data=0.5, train=True, rngs=None):
  """mean over all elements of (sigma^-2 + sigma_d^-2)(mu_fake(sg[x] + sigma n) - sg[x])^2."""
  weight = sigma ** -2 + sigma_data ** -2
  loss, _ = losses.denoising_loss(apply_fn, params, x, labels, sigma, noise, weight, train=train, rngs=rngs,
                                  reduction="mean")
  return loss


def f_divergence_weights(logits, divergence, *, logit_clamp=10.0, ratio_min=0.1, ratio_max=20.0, normalize=True):
  """f-distill: r = clamp(exp(clamp(logit, +-logit_clamp)), ratio_min, ratio_max) (detached), h = h_f(r), and
  h / (mean h + 1e-6) when `normalize`. logits [B] (or [B, ...]: averaged per sample first)."""
  logits = jnp.reshape(logits, (logits.shape[0], -1)).mean(axis=1)
  r = jnp.clip(jnp.exp(jnp.clip(sc.sg(logits), -logit_clamp, logit_clamp)), ratio_min, ratio_max)
  h = sc.f_divergence_weight(divergence)(r)
  if normalize:
    h = h / (jnp.mean(h) + 1e-6)
  return sc.sg(h)


# ------------------------------------------------------------------------------------------------------------
# The objective (dmd, dmd2, and fdistill through `f_weight`).


def roles(cfg) -> dict:
  """generator and fake score (denoisers), and with gan=True the classifier head on the fake score's features."""
  return {G: "denoiser", F: "denoiser", **({C: "feature_head"} if cfg.gan else {})}


def build_dmd_family(cfg, networks, spec, run: base.RunFacts, name: str,
                     f_weight: Optional[Callable] = None) -> base.Objective:
  """`f_weight(logits [B]) -> h [B]` (fdistill) multiplies the DM gradient per sample; the logits are the
  classifier's at the DM loss's own (x_t, sigma)."""
  use_gan = bool(cfg.gan)
  if f_weight is not None and not use_gan:
    raise ValueError(f"objective.{name}: the f-divergence weight needs the classifier (gan=True).")
  net_g, net_f = networks[G], networks[F]
  apply_g, apply_f = net_g.apply, net_f.apply
  roles = (G, F, C) if use_gan else (G, F)
  opt_cfg = {G: cfg.generator_optimizer, F: cfg.fake_score_optimizer}
  if use_gan:
    opt_cfg[C] = cfg.critic_optimizer
  tx = {role: state_lib.make_optimizer(opt_cfg[role]) for role in roles}
  batch_size = run.batch_size
  ema_decay = state_lib.ema_decay_fn(cfg.ema, batch_size)
  sigma_data = net_f.sigma_data
  grid = sc.karras_grid(cfg.num_train_timesteps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
  min_step = int(cfg.min_step_percent * cfg.num_train_timesteps)
  max_step = min(int(cfg.max_step_percent * cfg.num_train_timesteps), cfg.num_train_timesteps - 1)
  steps_idx = tuple(int(t) for t in cfg.denoising_timesteps)
  few_step_sigmas = tuple(float(grid[t]) for t in steps_idx) if steps_idx else None
  if steps_idx and not cfg.backward_simulation:
    raise ValueError(f"objective.{name}: a few-step generator is trained here only with backward_simulation=True.")
  use_regression = cfg.regression_weight > 0 and cfg.regression_pairs > 0
  reg_batch = cfg.regression_batch_size or batch_size

  head = networks[C] if use_gan else None

  def critic_logits(params_f, params_c, x, sigma, labels, train=False, rngs=None):
    _, feats = apply_f(params_f, x, sigma, labels, train=train, rngs=rngs, return_features=True)
    return head.apply(params_c, feats)

  def gan_input(rng, x):
    """Classifier input: x + sigma_t n, t ~ U{0..gan_max_timestep-1} (diffusion GAN), else x at sigma_min."""
    n = x.shape[0]
    if not cfg.gan_noise:
      return x, jnp.full((n,), grid[0])
    rng_t, rng_n = jax.random.split(rng)
    sigma = sc.grid_sigma(rng_t, n, grid, 0, cfg.gan_max_timestep - 1)
    return x + sc.expand(sigma, x) * jax.random.normal(rng_n, x.shape), sigma

  def make_pairs(rng, teacher, shape):
    """Teacher ODE pairs (z, y = Heun(teacher)(sigma_max z), labels) for DMD's regression loss."""
    p, chunk = cfg.regression_pairs, min(cfg.regression_chunk, cfg.regression_pairs)
    if p % chunk:
      raise ValueError(f"objective.{name}.regression_pairs ({p}) must be a multiple of regression_chunk ({chunk}).")
    rng_z, rng_l = jax.random.split(rng)
    z = jax.random.normal(rng_z, (p,) + tuple(shape[1:]))
    labels = (jax.random.randint(rng_l, (p,), 0, spec.num_classes) if spec.num_classes
              else jnp.zeros((p,), jnp.int32))
    if teacher is None:           # shape inference (restoring a checkpoint): the values come from the checkpoint
      return {"reg_z": z, "reg_y": jnp.zeros_like(z), "reg_labels": labels}
    s = run.sampler

    def one_chunk(args):
      zc, lc = args
      onehot = base.sample_labels(None, zc.shape[0], lc, spec.num_classes)
      fn = bind_denoiser(teacher.apply_fn, teacher.params, onehot, s["guidance"])
      return samplers.heun_sampler(fn, zc, num_steps=s["num_steps"], sigma_min=s["sigma_min"],
                                   sigma_max=s["sigma_max"], rho=s["rho"])
    y = jax.lax.map(one_chunk, (z.reshape((p // chunk, chunk) + z.shape[1:]), labels.reshape(p // chunk, chunk)))
    return {"reg_z": z, "reg_y": y.reshape(z.shape), "reg_labels": labels}

  def init(rng, batch, teacher=None):
    x, labels = base.batch_inputs(batch, spec)
    rng_g, rng_f, rng_c, rng_pairs, state_rng = jax.random.split(rng, 5)
    params = {G: sc.init_from_teacher(net_g, rng_g, x, labels, teacher, cfg.init)[0],
              F: sc.init_from_teacher(net_f, rng_f, x, labels, teacher, cfg.init)[0]}
    if use_gan:
      feats = jax.eval_shape(lambda p: apply_f(p, x, jnp.ones((x.shape[0],)), labels, return_features=True)[1],
                             params[F])
      params[C] = head.init(rng_c, jnp.zeros(feats.shape, feats.dtype))
    extra = make_pairs(rng_pairs, teacher, x.shape) if use_regression else {}
    return state_lib.create(state_rng, params, tx, ema_roles=(G,), extra=extra)

  def generator_loss(params_g, params_f, params_c, teacher, gen_in, labels, extra, rng):
    x_in, sigma_in, rng_drop = gen_in
    rng_t, rng_n, rng_gan, rng_reg, rng_reg_drop, rng_net_drop = jax.random.split(rng, 6)
    x = apply_g(params_g, x_in, sigma_in, labels, train=cfg.generator_dropout, rngs=sc.dropout_rngs(rng_drop))
    n = x.shape[0]
    sigma = sc.grid_sigma(rng_t, n, grid, min_step, max_step)
    noise = jax.random.normal(rng_n, x.shape)
    kw = dict(train=cfg.networks_train_mode, rngs=sc.dropout_rngs(rng_net_drop))   # one key for all three
    real_fn = lambda xt, s: teacher.apply_fn(teacher.params, xt, s, labels, **kw)
    aux = {}
    if f_weight is None:
      fake_fn = lambda xt, s: apply_f(params_f, xt, s, labels, **kw)
      loss_dm = dm_objective(x, sigma, noise, real_fn, fake_fn, weight_min=cfg.weight_min)
    else:
      x_t = sc.sg(x) + sc.expand(sigma, x) * noise
      y_f, feats = apply_f(params_f, x_t, sigma, labels, return_features=True, **kw)
      h = f_weight(head.apply(params_c, feats))
      loss_dm = distribution_matching_loss(x, real_fn(x_t, sigma), y_f, h, cfg.weight_min)
      aux[f"{G}/h_max"] = jnp.max(h)
    total = cfg.dm_loss_scale * loss_dm
    aux[f"{G}/dm_loss"] = loss_dm
    if use_gan:
      x_gan, sigma_gan = gan_input(rng_gan, x)
      loss_adv = gan.ns_generator_loss(critic_logits(params_f, params_c, x_gan, sigma_gan, labels, **kw))
      total = total + cfg.gen_gan_weight * loss_adv
      aux[f"{G}/adv_loss"] = loss_adv
    if use_regression:
      idx = jax.random.randint(rng_reg, (reg_batch,), 0, cfg.regression_pairs)
      onehot = base.sample_labels(None, reg_batch, extra["reg_labels"][idx], spec.num_classes)
      x_reg = sc.generate(apply_g, params_g, extra["reg_z"][idx], cfg.sigma_init, onehot,
                          train=cfg.generator_dropout, rngs=sc.dropout_rngs(rng_reg_drop))
      loss_reg = jnp.mean(sc.per_sample_mean((x_reg - extra["reg_y"][idx]) ** 2))
      total = total + cfg.regression_weight * loss_reg
      aux[f"{G}/regression_loss"] = loss_reg
    return total, aux

  def guidance_loss(trainable, x_fake, labels, x_real, real_labels, rng):
    params_f, params_c = trainable
    rng_t, rng_n, rng_drop, rng_real, rng_fake, rng_drop_r, rng_drop_f = jax.random.split(rng, 7)
    n = x_fake.shape[0]
    sigma = grid[jax.random.randint(rng_t, (n,), 0, cfg.num_train_timesteps)]
    loss_fake = dmd_fake_loss(apply_f, params_f, x_fake, labels, sigma, jax.random.normal(rng_n, x_fake.shape),
                              sigma_data=sigma_data, train=True, rngs=sc.dropout_rngs(rng_drop))
    total, aux = cfg.fake_loss_scale * loss_fake, {f"{F}/denoising_loss": loss_fake}
    if use_gan:
      xr, sr = gan_input(rng_real, x_real)
      xf, sf = gan_input(rng_fake, sc.sg(x_fake))
      logits_real = critic_logits(params_f, params_c, xr, sr, real_labels, train=True,
                                  rngs=sc.dropout_rngs(rng_drop_r))
      logits_fake = critic_logits(params_f, params_c, xf, sf, labels, train=True, rngs=sc.dropout_rngs(rng_drop_f))
      loss_d = gan.ns_discriminator_loss(logits_real, logits_fake)
      total = total + cfg.critic_loss_weight * loss_d
      aux.update({f"{C}/loss": loss_d, **gan.logit_metrics(logits_real, logits_fake, C)})
    return total, aux

  def train_step(state, batch, teacher):
    x_real, real_labels = base.batch_inputs(batch, spec)
    shape = x_real.shape
    rng_l, rng_z, rng_drop, rng_k, rng_bs, rng_g, rng_f = state.step_rng(
        "labels", "z", "generator_dropout", "k", "backward_simulation", G, F)
    labels = base.sample_labels(rng_l, shape[0], None, spec.num_classes)
    z = jax.random.normal(rng_z, shape)
    params_g = state.params[G]
    if few_step_sigmas:
      k = jax.random.randint(rng_k, (), 0, len(few_step_sigmas))
      x_in, s = sc.backward_simulation(apply_g, params_g, z, few_step_sigmas, labels, rng_bs, k)
      sigma_in = jnp.full((shape[0],), s)
    else:
      x_in, sigma_in = cfg.sigma_init * z, jnp.full((shape[0],), cfg.sigma_init, jnp.float32)
    gen_in = (x_in, sigma_in, rng_drop)
    # The guidance step's samples: made by the generator before its update (same input, same dropout key).
    x_fake = sc.sg(apply_g(params_g, x_in, sigma_in, labels, train=cfg.generator_dropout,
                            rngs=sc.dropout_rngs(rng_drop)))
    update_g = gating.gate(state.step, cfg.generator_every)
    params_c = state.params[C] if use_gan else {}
    (loss_g, aux_g), grads_g = gating.value_and_grad(update_g, generator_loss, params_g, state.params[F], params_c,
                                                     teacher, gen_in, labels, state.extra, rng_g)
    state, metrics_g = state_lib.apply_gradients(state, G, grads_g, tx[G], enabled=update_g.on)
    # Guidance step: fake score (and classifier), on the pre-update samples.
    (loss_f, aux_f), (grads_f, grads_c) = jax.value_and_grad(guidance_loss, has_aux=True)(
        (state.params[F], params_c), x_fake, labels, x_real, real_labels, rng_f)
    grads = {F: grads_f, C: grads_c} if use_gan else {F: grads_f}
    grads, guidance_norm = sc.clip_by_joint_norm(grads, cfg.guidance_clip_norm)
    state, metrics_f = state_lib.apply_gradients(state, F, grads[F], tx[F])
    metrics = {}
    if use_gan:
      state, metrics = state_lib.apply_gradients(state, C, grads[C], tx[C])
    state, decay = sc.step_ema(state, ema_decay)
    state = state.replace(step=state.step + 1)
    return state, {f"{G}/loss": loss_g, f"{F}/loss": loss_f, f"{G}/updated": jnp.asarray(update_g.on, jnp.float32),
                   f"{G}/ema_decay": decay, f"{F}/guidance_grad_norm": guidance_norm, **aux_g, **aux_f, **metrics_g,
                   **metrics_f, **metrics}

  return base.Objective(name=name, init=init, train_step=train_step,
                        sample=sc.make_sampler(apply_g, spec, cfg.sigma_init, few_step_sigmas), export_role=G,
                        apply_fn=apply_g)


@register("dmd", default_config, roles)
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  return build_dmd_family(cfg, networks, spec, run, "dmd")


@register("dmd2", dmd2_default_config, roles)
def build_dmd2(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  return build_dmd_family(cfg, networks, spec, run, "dmd2")


__all__ = ["dm_gradient", "distribution_matching_loss", "dm_objective", "dmd_fake_loss", "f_divergence_weights",
           "build_dmd_family"]
