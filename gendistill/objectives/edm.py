"""`edm`: teacher training with the EDM loss and EDM's EMA (Karras et al. 2022; ALGORITHMS.md section 1).

L = E_sigma,n [ lambda(sigma) || D(x + sigma n; sigma) - x ||^2 ], summed over pixels, mean over the batch.
"""
import jax
import jax.numpy as jnp
import ml_collections

from gendistill import nets
from gendistill import sharding
from gendistill import state as state_lib
from gendistill.diffusion import noise as noise_lib
from gendistill.diffusion import samplers
from gendistill.nets.denoiser import bind_denoiser
from gendistill.objectives import base, register

ROLE = "denoiser"


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      noise="edm",          # training noise levels and weights: edm (log-normal), vp or ve
      p_mean=-1.2,
      p_std=1.2,
      optimizer=state_lib.optimizer_config(lr=1e-3, b1=0.9, b2=0.999),
      ema=state_lib.ema_config(halflife_kimg=500.0, rampup_ratio=0.05),
  ))


def training_sigma(cfg, rng, n):
  sample_sigma, _ = noise_lib.training_noise(cfg.noise)
  if cfg.noise == "edm":
    return sample_sigma(rng, n, cfg.p_mean, cfg.p_std)
  return sample_sigma(rng, n)


def edm_loss(apply_fn, params, x, labels, rng, *, cfg, sigma_data, train=True):
  """The denoising loss of one batch; returns (loss, per-sample losses)."""
  rng_sigma, rng_noise, rng_dropout = jax.random.split(rng, 3)
  sigma = training_sigma(cfg, rng_sigma, x.shape[0])
  n = jax.random.normal(rng_noise, x.shape, x.dtype)
  return edm_loss_given_noise(apply_fn, params, x, labels, sigma, n, rng_dropout, cfg=cfg, sigma_data=sigma_data,
                              train=train)


def edm_loss_given_noise(apply_fn, params, x, labels, sigma, n, rng_dropout, *, cfg, sigma_data, train=True):
  """`edm_loss` with the noise levels sigma [B] and the noise n drawn by the caller (for micro-batching)."""
  _, weight_fn = noise_lib.training_noise(cfg.noise)
  weight = weight_fn(sigma, sigma_data)
  denoised = apply_fn(params, x + noise_lib.expand(sigma, x) * n, sigma, labels, train=train,
                      rngs={"dropout": rng_dropout})
  per_sample = weight * jnp.sum(jnp.reshape((denoised - x) ** 2, (x.shape[0], -1)), axis=1)
  return jnp.mean(per_sample), per_sample


@register("edm", default_config)
def build(config: ml_collections.ConfigDict, spec) -> base.Objective:
  cfg = config.objective.edm
  net = nets.build_denoiser(config.network, spec)
  tx = state_lib.make_optimizer(cfg.optimizer)
  ema_decay = state_lib.ema_decay_fn(cfg.ema, config.data.batch_size)
  sampler_cfg = config.sampler

  def apply_fn(params, x, sigma, labels=None, train=False, rngs=None):
    return net.apply(params, x, sigma, labels, train=train, rngs=rngs)

  microbatches = config.train.get("microbatches", 1)

  def loss_fn(params, batch, rng_dropout):
    return edm_loss_given_noise(apply_fn, params, batch["x"], batch["labels"], batch["sigma"], batch["noise"],
                                rng_dropout, cfg=cfg, sigma_data=config.network.sigma_data)[0]

  def init(rng, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    init_rng, state_rng = jax.random.split(rng)
    params = net.init(init_rng, x, jnp.ones((x.shape[0],)), labels)
    return state_lib.create(state_rng, {ROLE: params}, {ROLE: tx}, ema_roles=(ROLE,))

  def train_step(state, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    (rng,) = state.step_rng(ROLE)
    # The per-example noise is drawn for the whole batch first (as edm_loss draws it), so that gradient
    # accumulation over micro-batches gives the full batch's update.
    rng_sigma, rng_noise, rng_dropout = jax.random.split(rng, 3)
    batch = dict(x=x, labels=labels, sigma=training_sigma(cfg, rng_sigma, x.shape[0]),
                 noise=jax.random.normal(rng_noise, x.shape, x.dtype))
    loss, grads = sharding.accumulate_gradients(loss_fn, state.params[ROLE], batch, rng_dropout,
                                                num_microbatches=microbatches)
    state, metrics = state_lib.apply_gradients(state, ROLE, grads, tx)
    decay = ema_decay(state.step)
    state = state.replace(step=state.step + 1,
                          ema={ROLE: state_lib.ema_update(state.ema[ROLE], state.params[ROLE], decay)})
    return state, {f"{ROLE}/loss": loss, f"{ROLE}/ema_decay": decay, **metrics}

  def sample(state, rng, num, labels=None, steps=None):
    """Heun (EDM Algorithm 2) with the EMA denoiser; `steps` = N gives NFE 2N - 1."""
    rng_labels, rng_noise, rng_churn = jax.random.split(rng, 3)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    denoise_fn = bind_denoiser(apply_fn, state.ema[ROLE], onehot, sampler_cfg.guidance)
    noise = jax.random.normal(rng_noise, (num,) + tuple(spec.shape))
    return samplers.heun_sampler(
        denoise_fn, noise, rng_churn, num_steps=steps or sampler_cfg.num_steps, sigma_min=sampler_cfg.sigma_min,
        sigma_max=sampler_cfg.sigma_max, rho=sampler_cfg.rho, s_churn=sampler_cfg.s_churn,
        s_min=sampler_cfg.s_min, s_max=sampler_cfg.s_max, s_noise=sampler_cfg.s_noise)

  return base.Objective(name="edm", init=init, train_step=train_step, sample=sample, export_role=ROLE,
                        apply_fn=apply_fn)
