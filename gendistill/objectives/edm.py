"""`edm`: teacher training with the EDM loss and EDM's EMA (Karras et al. 2022; docs/objectives/teacher_training.md).

L = E_sigma,n [ lambda(sigma) || D(x + sigma n; sigma) - x ||^2 ], summed over pixels, mean over the batch.
"""
import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.diffusion import losses
from gendistill.diffusion import noise as noise_lib
from gendistill.diffusion import samplers
from gendistill.diffusion.guidance import bind_denoiser
from gendistill.objectives import base, register
from gendistill.sharding.accumulation import accumulate_gradients

ROLE = "denoiser"


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      noise="edm",          # training noise levels and weights: edm (log-normal), vp or ve
      p_mean=-1.2,
      p_std=1.2,
      optimizer=state_lib.optimizer_config(lr=1e-3, b1=0.9, b2=0.999),
      ema=state_lib.ema_config(halflife_kimg=500.0, rampup_ratio=0.05),
  ))


def edm_loss(apply_fn, params, x, labels, rng, *, cfg, sigma_data, train=True):
  """The denoising loss of one batch; returns (loss, per-sample losses)."""
  return losses.edm_loss(apply_fn, params, x, labels, rng, noise=cfg.noise, p_mean=cfg.p_mean, p_std=cfg.p_std,
                         sigma_data=sigma_data, train=train, drop_nonfinite=False)


@register("edm", default_config, {ROLE: "denoiser"})
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  network = networks[ROLE]
  apply_fn = network.apply
  tx = state_lib.make_optimizer(cfg.optimizer)
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  s = run.sampler
  weight_fn = noise_lib.training_noise(cfg.noise)[1]

  def loss_fn(params, batch, rng_dropout):
    weight = weight_fn(batch["sigma"], network.sigma_data)
    return losses.denoising_loss(apply_fn, params, batch["x"], batch["labels"], batch["sigma"], batch["noise"],
                                 weight, rngs={"dropout": rng_dropout}, drop_nonfinite=False)[0]

  def init(rng, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    init_rng, state_rng = jax.random.split(rng)
    params = network.init(init_rng, x, jnp.ones((x.shape[0],)), labels)
    return state_lib.create(state_rng, {ROLE: params}, {ROLE: tx}, ema_roles=(ROLE,))

  def train_step(state, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    (rng,) = state.step_rng(ROLE)
    # The per-example noise is drawn for the whole batch first (as losses.edm_loss draws it), so that gradient
    # accumulation over micro-batches gives the full batch's update.
    rng_sigma, rng_noise, rng_dropout = jax.random.split(rng, 3)
    batch = dict(x=x, labels=labels, sigma=noise_lib.training_sigma(cfg.noise, rng_sigma, x.shape[0], cfg.p_mean,
                                                                     cfg.p_std),
                 noise=jax.random.normal(rng_noise, x.shape, x.dtype))
    loss, grads = accumulate_gradients(loss_fn, state.params[ROLE], batch, rng_dropout,
                                       num_microbatches=run.microbatches)
    state, metrics = state_lib.apply_gradients(state, ROLE, grads, tx)
    decay = ema_decay(state.step)
    state = state.replace(step=state.step + 1,
                          ema={ROLE: state_lib.ema_update(state.ema[ROLE], state.params[ROLE], decay)})
    return state, {f"{ROLE}/loss": loss, f"{ROLE}/ema_decay": decay, **metrics}

  def sample(state, rng, num, labels=None, steps=None):
    """Heun (EDM Algorithm 2) with the EMA denoiser; `steps` = N gives NFE 2N - 1."""
    rng_labels, rng_noise, rng_churn = jax.random.split(rng, 3)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    denoise_fn = bind_denoiser(apply_fn, state.ema[ROLE], onehot, s["guidance"])
    noise = jax.random.normal(rng_noise, (num,) + tuple(spec.shape))
    return samplers.heun_sampler(
        denoise_fn, noise, rng_churn, num_steps=steps or s["num_steps"], sigma_min=s["sigma_min"],
        sigma_max=s["sigma_max"], rho=s["rho"], s_churn=s["s_churn"], s_min=s["s_min"], s_max=s["s_max"],
        s_noise=s["s_noise"])

  return base.Objective(name="edm", init=init, train_step=train_step, sample=sample, export_role=ROLE,
                        apply_fn=apply_fn, accumulates_gradients=True)
