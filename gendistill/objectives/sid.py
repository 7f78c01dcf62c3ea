"""`sid` and `sida`: Score identity Distillation (Zhou et al., ICML 2024) and its adversarial form SiDA
(Zhou et al., ICLR 2025), as in the official code (docs/objectives/score_distillation.md).

Networks (all with the teacher's architecture and EDM preconditioning): teacher f_phi (frozen, eval mode), fake
score f_psi and generator G_theta, both started from the teacher's parameters. Each train_step is one SiD
iteration:

(a) fake-score step. x_g = sg[G(sigma_init z; sigma_init, c)] with G in eval mode (no dropout);
    L_psi = (1/B) sum_b sum_pix lambda(sigma) (f_psi(x_g + sigma n; sigma, c) - x_g)^2, ln sigma ~ N(-1.2, 1.2^2),
    f_psi in train mode (dropout), kappa1-guided if kappa1 != 1.
(b) generator step, with the just-updated f_psi frozen. Fresh z, G in train mode (dropout);
    u ~ U(0, t_max/1000), sigma = (sigma_max^(1/rho) + (1-u)(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho;
    x_t = x_g + sigma n WITHOUT stop-gradient; y_r = f_phi(x_t; sigma) (kappa4), y_f = f_psi(x_t; sigma) (kappa2,
    kappa3; f_psi in eval mode, its parameters frozen but its input differentiated);
    w = sg[mean_pix |x_g - y_r|] clipped at 1e-5;
    L_theta = (100/B) sum_b sum_pix (y_r - y_f2) [(y_r - x_g) - alpha (y_r - y_f3)] / w.
    The gradient reaches theta through x_g directly AND through both networks' inputs.
Gradients pass through nan_to_num(nan=0, posinf=1e5, neginf=-1e5) and samples with non-finite values are
dropped from the losses (the batch size stays the divisor), as in the official code. Adam (0, 0.999) for both.
The generator's EMA (EDM half-life form) is what `sample` uses.

SiDA adds a discriminator that is the fake score's own encoder: the logit map is the channel mean of the
bottleneck features (the Denoiser's `return_features`), so there is no extra role.
(a') L_psi + L_D, L_D = lambda(sigma) 0.5 [BCE(D(x_real + sigma n), 1) + BCE(D(x_g + sigma n), 0)] with real and
     fake sharing sigma and n (the fake logits come from the same forward as the denoising loss); fake-score
     gradients clipped by value at 1 (fake_score_optimizer.grad_clip_value).
(b') L_adv = BCE(clamp(D(x_t), -10, 10), 1) / w, averaged over the logit map, times C*H*W, times 0.01;
     total 0.5 * L_theta + 0.5 * L_adv once more than `gan_start_kimg` images were seen (L_theta alone before),
     and no generator update at all until more than `generator_start_kimg` images were seen.
`gan_reduction`: the official code takes torch's BCEWithLogitsLoss mean over a per-GPU micro-batch, so the
discriminator loss is mean(lambda) * mean(BCE) and the generator term mean(BCE) * mean(1/w) within a micro-batch
('batch', with the global batch as the one micro-batch: the default); 'per_sample' weights each sample's own
logit map by its own lambda or 1/w.

Conventions kept from the official code: labels come from data (SiD is otherwise data-free), a fresh draw for
each half-step (`generator_labels`; the generator's are uniform over the classes, as a new batch of a balanced
dataset's would be); G and f_psi get independent noise in the two half-steps; the fake score is trained with
EDM's loss and reduction (sum over pixels, mean over the batch). Not implemented: EDM's augmentation pipe
(p = 0.12 on CIFAR-10 in the official code) -- this library has no augmentation pipe and its teachers are
trained without one.
"""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.diffusion import losses
from gendistill.diffusion.guidance import guided_apply
from gendistill.objectives import base, gating, register
from gendistill.objectives import score_common as sc

G, F = sc.GENERATOR, sc.FAKE_SCORE


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      alpha=1.2,                # L = L2 - alpha L1 form; 1.2 on CIFAR-10/ImageNet, 1.0 on AFHQ and in SiDA
      sigma_init=2.5,           # generator input: G(sigma_init z; sigma_init)
      t_max=800,                # generator-loss noise: u ~ U(0, t_max/1000) in Karras rho-space
      sigma_min=0.002,
      sigma_max=80.0,
      rho=7.0,
      p_mean=-1.2,              # fake-score loss noise: ln sigma ~ N(p_mean, p_std^2)
      p_std=1.2,
      fake_loss_scale=1.0,      # official --ls
      generator_loss_scale=100.0,  # official --lsg
      weight_min=1e-5,          # clip of the per-sample normaliser w
      kappa1=1.0,               # SiD-LSG guidance scales: fake score in its own loss
      kappa2=1.0,               # fake score in the generator loss, (y_r - y_f) factor
      kappa3=1.0,               # fake score in the generator loss, (y_r - x_g) - alpha (y_r - y_f) factor
      kappa4=1.0,               # teacher in the generator loss
      generator_dropout=True,   # G in train mode in its own update (official); always eval when making fakes
      init="auto",              # auto | teacher | random: student networks from the teacher's params
      generator_every=1,        # G updates on every k-th step (1 = SiD); the fake score updates every step
      generator_start_kimg=0.0,  # no G update until more than this many thousand images were seen
      nan_to_num=True,          # official: gradients through nan_to_num(nan=0, +-inf=+-1e5)
      generator_labels="fresh",  # fresh (official: a new uniform draw for G's half-step) | batch (the fake
                                 # score's batch labels for both half-steps, as before; reproduces older runs)
      fake_score_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8),
      generator_optimizer=state_lib.optimizer_config(lr=1e-5, b1=0.0, b2=0.999, eps=1e-8),
      ema=state_lib.ema_config(halflife_kimg=500.0, rampup_ratio=0.05),
  ))


def sida_default_config() -> ml_collections.ConfigDict:
  c = default_config()
  c.alpha = 1.0
  c.generator_start_kimg = 100.0
  c.fake_score_optimizer.grad_clip_value = 1.0
  c.update(dict(
      gan_start_kimg=200.0,     # adversarial generator term only after this many thousand images
      adv_loss_scale=0.01,      # official --lsg_gan (times C*H*W)
      d_loss_scale=1.0,         # official --lsd
      gan_mix=0.5,              # total = (1 - mix) * L_SiD + mix * L_adv once the GAN term is on
      logit_clamp=10.0,         # the generator's logits are clamped to +-logit_clamp
      gan_reduction="batch",    # batch (official micro-batch means) | per_sample
  ))
  return c


# ------------------------------------------------------------------------------------------------------------
# Pure losses.


def sid_loss_terms(x_g, y_r, y_f2, y_f3, *, alpha, weight_min=1e-5):
  """Per-sample SiD generator loss sum_pix (y_r - y_f2) [(y_r - x_g) - alpha (y_r - y_f3)] / w with
  w = sg[mean_pix |x_g - y_r|] clipped at weight_min; non-finite samples give 0. Returns (per_sample, w)."""
  w = sc.sg(jnp.maximum(sc.per_sample_mean(jnp.abs(x_g - y_r)), weight_min))
  per_sample = sc.per_sample_sum((y_r - y_f2) * ((y_r - x_g) - alpha * (y_r - y_f3))) / w
  ok = sc.finite_rows(x_g, y_r, y_f2, y_f3)
  return jnp.where(ok, per_sample, 0.0), w


def sid_generator_objective(x_g, sigma, noise, real_fn, fake_fn, *, alpha, weight_min=1e-5):
  """The SiD generator loss of generated samples x_g, before the x100 scale and the batch mean.

  real_fn(x, sigma) and fake_fn(x, sigma) are the teacher and the fake score with their parameters bound;
  fake_fn may return (y_f2, y_f3) for SiD-LSG's kappa2 != kappa3. x_t = x_g + sigma n is NOT stop-gradiented:
  the gradient flows through both networks' inputs. Returns (per_sample [B], w [B]).
  """
  x_t = x_g + sc.expand(sigma, x_g) * noise
  y_r = real_fn(x_t, sigma)
  out = fake_fn(x_t, sigma)
  y_f2, y_f3 = out if isinstance(out, tuple) else (out, out)
  return sid_loss_terms(x_g, y_r, y_f2, y_f3, alpha=alpha, weight_min=weight_min)


def logit_map(features):
  """SiDA's discriminator: the channel mean of the fake score's bottleneck features, flattened per sample."""
  return jnp.reshape(jnp.mean(features, axis=-1), (features.shape[0], -1))


def sida_discriminator_loss(logits_real, logits_fake, weight, reduction="batch"):
  """lambda(sigma) 0.5 [BCE(real, 1) + BCE(fake, 0)]; logits [B, M]. 'batch': mean(lambda) * batch-mean BCE
  (the official micro-batch form); 'per_sample': mean_b lambda_b * mean_m BCE_bm."""
  bce = 0.5 * (sc.bce_with_logits(logits_real, 1.0) + sc.bce_with_logits(logits_fake, 0.0))
  if reduction == "batch":
    return jnp.mean(weight) * jnp.mean(bce)
  return jnp.mean(weight * jnp.mean(bce, axis=1))


def sida_adversarial_loss(logits, w, num_pixels, *, clamp=10.0, reduction="batch"):
  """BCE(clamp(D(x_t)), 1) / w over the logit map, times C*H*W (before the 0.01 scale); logits [B, M]."""
  bce = sc.bce_with_logits(jnp.clip(logits, -clamp, clamp), 1.0)
  if reduction == "batch":
    return num_pixels * jnp.mean(bce) * jnp.mean(1.0 / w)
  return num_pixels * jnp.mean(jnp.mean(bce, axis=1) / w)


# ------------------------------------------------------------------------------------------------------------
# The objective.


ROLES = {G: "denoiser", F: "denoiser"}


def _build(cfg, networks, spec, run: base.RunFacts, name: str, adversarial: bool) -> base.Objective:
  if cfg.generator_labels not in ("fresh", "batch"):
    raise ValueError(f"objective.{name}.generator_labels must be 'fresh' or 'batch'; got {cfg.generator_labels!r}.")
  if adversarial and cfg.gan_reduction not in ("batch", "per_sample"):
    raise ValueError(f"objective.{name}.gan_reduction must be 'batch' or 'per_sample'; got {cfg.gan_reduction!r}.")
  net_g, net_f = networks[G], networks[F]
  apply_g, apply_f = net_g.apply, net_f.apply
  tx = {G: state_lib.make_optimizer(cfg.generator_optimizer), F: state_lib.make_optimizer(cfg.fake_score_optimizer)}
  batch_size = run.batch_size
  ema_decay = state_lib.ema_decay_fn(cfg.ema, batch_size)
  sigma_data = net_f.sigma_data
  kappa_fake = (float(cfg.kappa2), float(cfg.kappa3))
  # Official: G steps once cur_nimg = step * B > start images, i.e. step > start // B (always when start = 0);
  # likewise the GAN term.
  generator_start = int(round(cfg.generator_start_kimg * 1000)) // batch_size if cfg.generator_start_kimg > 0 else -1
  gan_start = int(round(cfg.gan_start_kimg * 1000)) // batch_size if adversarial and cfg.gan_start_kimg > 0 else -1

  init = sc.generator_and_fake_score_init(net_g, net_f, spec, tx, cfg.init)

  def fake_loss(params_f, params_g, x_real, labels, rng):
    rng_z, rng_loss = jax.random.split(rng)
    z = jax.random.normal(rng_z, x_real.shape)
    x_g = sc.sg(sc.generate(apply_g, params_g, z, cfg.sigma_init, labels, train=False))
    if not adversarial:
      loss, _ = losses.edm_loss(apply_f, params_f, x_g, labels, rng_loss, p_mean=cfg.p_mean, p_std=cfg.p_std,
                                sigma_data=sigma_data, train=True, guidance=cfg.kappa1)
      return cfg.fake_loss_scale * loss, {f"{F}/denoising_loss": loss}
    # SiDA: the denoising loss and the discriminator loss share sigma, n and (for the fakes) the forward pass.
    rng_sigma, rng_noise, rng_drop_f, rng_drop_r = jax.random.split(rng_loss, 4)
    n = x_g.shape[0]
    sigma = sc.noise_lib.lognormal_sigma(rng_sigma, n, cfg.p_mean, cfg.p_std)
    weight = sc.noise_lib.edm_weight(sigma, sigma_data)
    noise = jax.random.normal(rng_noise, x_g.shape)
    d_fake, feat_fake = apply_f(params_f, x_g + sc.expand(sigma, x_g) * noise, sigma, labels, train=True,
                                rngs=sc.dropout_rngs(rng_drop_f), return_features=True)
    _, feat_real = apply_f(params_f, x_real + sc.expand(sigma, x_real) * noise, sigma, labels, train=True,
                           rngs=sc.dropout_rngs(rng_drop_r), return_features=True)
    logits_fake, logits_real = logit_map(feat_fake), logit_map(feat_real)
    ok = sc.finite_rows(x_g, d_fake, logits_fake, logits_real)
    denoise = jnp.mean(jnp.where(ok, weight * sc.per_sample_sum((d_fake - x_g) ** 2), 0.0))
    loss_d = sida_discriminator_loss(jnp.where(ok[:, None], logits_real, 0.0),
                                     jnp.where(ok[:, None], logits_fake, 0.0), weight, cfg.gan_reduction)
    total = cfg.fake_loss_scale * denoise + cfg.d_loss_scale * loss_d
    return total, {f"{F}/denoising_loss": denoise, f"{F}/d_loss": loss_d,
                   f"{F}/d_real_prob": jnp.mean(jax.nn.sigmoid(logits_real)),
                   f"{F}/d_fake_prob": jnp.mean(jax.nn.sigmoid(logits_fake))}

  def generator_loss(params_g, params_f, teacher, labels, gan_on, rng, *, shape):
    x_g, sigma, noise = sc.generator_draw(apply_g, params_g, labels, jax.random.split(rng, 4), shape, cfg)
    real_fn = lambda x, s: guided_apply(teacher.apply_fn, teacher.params, x, s, labels, cfg.kappa4)
    aux = {}
    if not adversarial:
      fake_fn = lambda x, s: guided_apply(apply_f, params_f, x, s, labels, kappa_fake)
      per_sample, w = sid_generator_objective(x_g, sigma, noise, real_fn, fake_fn, alpha=cfg.alpha,
                                              weight_min=cfg.weight_min)
      loss = cfg.generator_loss_scale * jnp.mean(per_sample)
    else:
      x_t = x_g + sc.expand(sigma, x_g) * noise
      y_r = real_fn(x_t, sigma)
      y_f, feats = apply_f(params_f, x_t, sigma, labels, return_features=True)
      per_sample, w = sid_loss_terms(x_g, y_r, y_f, y_f, alpha=cfg.alpha, weight_min=cfg.weight_min)
      logits = logit_map(feats)
      ok = sc.finite_rows(x_g, y_r, y_f, logits)
      num_pixels = float(math.prod(x_g.shape[1:]))
      adv = sida_adversarial_loss(jnp.where(ok[:, None], logits, 0.0), w, num_pixels, clamp=cfg.logit_clamp,
                                  reduction=cfg.gan_reduction)
      sid = cfg.generator_loss_scale * jnp.mean(per_sample)
      adv = cfg.adv_loss_scale * adv
      loss = jnp.where(gan_on, (1 - cfg.gan_mix) * sid + cfg.gan_mix * adv, sid)
      aux = {f"{G}/sid_loss": sid, f"{G}/adv_loss": adv}
    aux.update({f"{G}/weight": jnp.mean(w), f"{G}/sample_std": jnp.std(x_g)})
    return loss, aux

  def train_step(state, batch, teacher):
    x_real, labels = base.batch_inputs(batch, spec)
    rng_f, rng_g, rng_labels = state.step_rng(F, G, "generator_labels")
    # The official loop reads a new data batch for each half-step; its labels are an independent draw
    # (uniform here: the datasets' classes are balanced). 'batch' reuses the fake score's labels (old behaviour).
    labels_g = labels if cfg.generator_labels == "batch" else base.sample_labels(
        rng_labels, x_real.shape[0], None, spec.num_classes)
    # (a) fake score: fit f_psi to the current generator's samples.
    (loss_f, aux_f), grads_f = jax.value_and_grad(fake_loss, has_aux=True)(
        state.params[F], state.params[G], x_real, labels, rng_f)
    state, metrics_f = sc.sanitised_update(state, F, grads_f, tx[F], cfg.nan_to_num)
    # (b) generator, against the updated fake score (frozen here).
    # With generator_every = 1 the gate is off only during SiDA's warm-up: no conditional (gating's cost rules).
    update_g = gating.gate(state.step, cfg.generator_every, warmup=generator_start + 1)
    gan_on = state.step > gan_start if adversarial else jnp.array(False)
    loss_fn = functools.partial(generator_loss, shape=x_real.shape)
    (loss_g, aux_g), grads_g = gating.value_and_grad(update_g, loss_fn, state.params[G], state.params[F], teacher,
                                                     labels_g, gan_on, rng_g)
    state, metrics_g = sc.sanitised_update(state, G, grads_g, tx[G], cfg.nan_to_num, enabled=update_g.on)
    state, decay = sc.step_ema(state, ema_decay)
    state = state.replace(step=state.step + 1)
    metrics = {f"{F}/loss": loss_f, f"{G}/loss": loss_g, f"{G}/updated": jnp.asarray(update_g.on, jnp.float32),
               f"{G}/ema_decay": decay, **aux_f, **aux_g, **metrics_f, **metrics_g}
    if adversarial:
      metrics[f"{G}/gan_on"] = gan_on.astype(jnp.float32)
    return state, metrics

  return base.Objective(name=name, init=init, train_step=train_step,
                        sample=sc.make_sampler(apply_g, spec, cfg.sigma_init), export_role=G, apply_fn=apply_g)


@register("sid", default_config, ROLES)
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  return _build(cfg, networks, spec, run, "sid", adversarial=False)


@register("sida", sida_default_config, ROLES)
def build_sida(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  return _build(cfg, networks, spec, run, "sida", adversarial=True)
