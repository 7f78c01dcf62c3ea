"""`meanflow`: Mean Flows for one-step generative modelling (Geng, Deng, Bai, Kolter, He, 2025), from data.

Flow: z_t = (1 - t) x + t e, e ~ N(0, I), conditional velocity v = e - x, t in [0, 1] (t = 1 is noise).
Average velocity u(z_t, r, t) = (1/(t - r)) int_r^t v(z_s, s) ds, so z_r = z_t - (t - r) u(z_t, r, t) and
u(z, t, t) = v(z, t). Differentiating (t - r) u = int_r^t v in t gives the MeanFlow identity
  u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt u = v . grad_z u + du/dt   (r held fixed),
and the loss regresses the network on it with the right side under stop-gradient:
  (u, T) = jvp(u_theta(., r, .), (z_t, t), (v, 1));   u_tgt = sg[v - (t - r) T];   Delta = u - u_tgt;
  L = mean_b sg[w] ||Delta||^2,  w = 1 / (||Delta||^2 + c)^p   (the paper's adaptive weighting; p = 0: plain L2).
(r, t): two draws of a logit-normal sigmoid(N(p_mean, p_std^2)), t the larger and r the smaller; with
probability 1 - `ratio` r = t (plain flow matching on those samples).

Classifier-free guidance folded into training (the paper's Eq. for v~ with its kappa extension):
  v~ = omega v + kappa u(z_t, t, t | c) + (1 - omega - kappa) u(z_t, t, t | empty)   (both u under sg),
used both as the JVP's tangent and in the target, for samples that keep their label; samples whose label is
dropped (probability `class_dropout`) use v. omega = 1, kappa = 0 is unguided. Sampling then needs no guidance.

Network. u_theta(z, r, t) is the backbone of the received network called directly (no preconditioning) with the time
input time_scale * t and, as a second time input, a positional embedding of time_scale * (t - r) appended to the
class-label vector, so that the backbone's own label layer embeds (t, t - r) as the paper does with no change to
any network (the backbone is built with label_dim = num_classes + gap_features: the registry builds it for
`network_spec`'s widened data spec). Label dropout is done here, not
by the backbone (network.label_dropout must be 0, which keeps the gap features). `apply_fn` exports the network
as a denoiser D(x; sigma) = z - t u(z, t, t) with t = sigma / (1 + sigma), z = x / (1 + sigma), so a trained
model is also a diffusion teacher.

time_scale is 1 (time inputs of order 1, as EDM's ln(sigma)/4). With a DDPM-style 1000 t the positional
embedding's fastest features oscillate ~160 times over [0, 1], the JVP's du/dt is dominated by them, and neither
the toy MLP nor the digits UNet learns (digits one-step FD 266 against 54 at step 200, chance class accuracy against
0.97; experiments/digits_new_objectives.md).

Sampling: 1 step x = e - u(e, 0, 1); k steps on t_i = 1 - i/k: z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i).

Paper vs official code (Gsunshine/meanflow, JAX): the official code feeds its network (t, t - r) through two
time embeddings and clips (t - r) to [0, 1] in the target (a no-op for r <= t); the guided velocity is the JVP
tangent there too. CIFAR-10 in the paper: U-Net, logit-normal (-2.0, 2.0), ratio 0.75, p 0.75; ImageNet:
(-0.4, 1.0), ratio 0.25, p 1.0 (the defaults here).
"""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.diffusion.noise import expand
from gendistill.nets import layers
from gendistill.objectives import base, register
from gendistill.objectives import score_common as sc
from gendistill.sharding.accumulation import accumulate_gradients

G = sc.GENERATOR
sg = jax.lax.stop_gradient


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      time_dist="logit_normal",  # logit_normal | uniform: the two draws of (r, t)
      p_mean=-0.4,
      p_std=1.0,
      ratio=0.25,               # fraction of samples with r != t
      adaptive_p=1.0,           # w = 1 / (||Delta||^2 + c)^p
      adaptive_c=1e-3,
      omega=1.0,                # CFG folded into training (1 = none)
      kappa=0.0,
      class_dropout=0.1,        # conditional data: labels dropped (the unconditional model) with this probability
      time_scale=1.0,           # the backbone's time input is time_scale * t; of order 1 (module docstring)
      gap_features=32,          # size of the (t - r) embedding appended to the label vector
      sample_steps=1,           # default steps of `sample`
      optimizer=state_lib.optimizer_config(lr=1e-4, b1=0.9, b2=0.95),
      ema=state_lib.ema_config(halflife_kimg=0.0, rampup_ratio=0.0, decay=0.9999),
  ))


# ------------------------------------------------------------------------------------------------------------
# Pure functions.


def interpolate(x, e, t):
  return expand(1.0 - t, x) * x + expand(t, x) * e


def sample_times(rng, n, *, dist="logit_normal", p_mean=-0.4, p_std=1.0, ratio=0.25):
  """(r, t) [n] with r <= t: two draws, sorted; r = t for a fraction 1 - ratio of the samples."""
  rng_a, rng_b, rng_eq = jax.random.split(rng, 3)
  if dist == "logit_normal":
    draw = lambda k: jax.nn.sigmoid(p_mean + p_std * jax.random.normal(k, (n,)))
  elif dist == "uniform":
    draw = lambda k: jax.random.uniform(k, (n,))
  else:
    raise ValueError(f"objective.meanflow.time_dist must be 'logit_normal' or 'uniform'; got {dist!r}.")
  a, b = draw(rng_a), draw(rng_b)
  t, r = jnp.maximum(a, b), jnp.minimum(a, b)
  r = jnp.where(jax.random.uniform(rng_eq, (n,)) < ratio, r, t)
  return r, t


def meanflow_target(u_fn, z_t, r, t, v):
  """(u, u_tgt): u = u_fn(z_t, r, t) (differentiable) and u_tgt = sg[v - (t - r) d/dt u], the total derivative
  along the flow with r fixed, from one jax.jvp with tangents (v, 1)."""
  u, dudt = jax.jvp(lambda z, s: u_fn(z, r, s), (z_t, t), (v, jnp.ones_like(t)))
  return u, sg(v - expand(t - r, z_t) * dudt)


def adaptive_loss(u, u_tgt, p=1.0, c=1e-3):
  """Per-sample sg[w] ||u - u_tgt||^2 with w = 1/(||u - u_tgt||^2 + c)^p, and the unweighted ||.||^2."""
  sq = sc.per_sample_sum((u - u_tgt) ** 2)
  return sq / sg(sq + c) ** p, sq


def guided_velocity(v, u_cond, u_uncond, omega=1.0, kappa=0.0):
  """v~ = omega v + kappa u(c) + (1 - omega - kappa) u(empty)."""
  return omega * v + kappa * u_cond + (1.0 - omega - kappa) * u_uncond


def meanflow_sampler(u_fn, e, steps=1):
  """z_1 = e; z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z, t_{i+1}, t_i) on t_i = 1 - i/steps; returns z_0."""
  z = e
  n = e.shape[0]
  for i in range(steps):
    t, r = 1.0 - i / steps, 1.0 - (i + 1) / steps
    z = z - (t - r) * u_fn(z, jnp.full((n,), r), jnp.full((n,), t))
  return z


# ------------------------------------------------------------------------------------------------------------
# The network adapter: a second time input through the label vector.


def average_velocity_apply_fn(network, num_classes: int, gap_features: int, time_scale: float):
  """u(params, z, r, t, labels, train, rngs) from `network`'s backbone (a `nets.Network` with `apply_backbone`,
  built for label_dim = num_classes + gap_features). labels: one-hot [N, num_classes] (zero rows:
  unconditional) or None."""
  if network.apply_backbone is None:
    raise ValueError("meanflow needs a network with a separate backbone (Network.apply_backbone), e.g. "
                     "Network.from_module of a nets.Denoiser.")

  def apply_fn(params, z, r, t, labels=None, train=False, rngs=None):
    n = z.shape[0]
    r = jnp.broadcast_to(jnp.asarray(r, jnp.float32), (n,))
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
    gap = layers.positional_embedding(time_scale * (t - r), gap_features, endpoint=True)
    onehot = jnp.zeros((n, num_classes), jnp.float32) if labels is None else labels
    out = network.apply_backbone(params, z, time_scale * t, jnp.concatenate([onehot, gap], axis=1), train=train,
                                 rngs=rngs)
    return out.astype(jnp.float32)
  return apply_fn


def _gap_features(cfg) -> int:
  gap = int(cfg.gap_features)
  if gap < 4 or gap % 2:
    raise ValueError(f"objective.meanflow.gap_features must be an even number >= 4; got {gap}.")
  return gap


def network_spec(cfg, spec, network_cfg):
  """The spec the registry builds the network for: labels widened by the (t - r) features (label_dim =
  num_classes + gap_features). The backbone's own label dropout would drop those features too, so it must be 0."""
  if network_cfg.get("label_dropout", 0.0):
    raise ValueError("meanflow drops labels itself (objective.meanflow.class_dropout); set network.label_dropout=0.")
  return dataclasses.replace(spec, num_classes=spec.num_classes + _gap_features(cfg))


# ------------------------------------------------------------------------------------------------------------
# The objective.


@register("meanflow", default_config, {G: "denoiser"}, network_spec)
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  """`networks[G]` must be built for network_spec(cfg, spec, ...) (label_dim = num_classes + gap_features);
  objectives.build does that through the registry, callers of objectives.make build it so themselves."""
  sample_times(jax.random.key(0), 1, dist=cfg.time_dist)   # validate early
  gap = _gap_features(cfg)
  net = networks[G]
  u_apply = average_velocity_apply_fn(net, spec.num_classes, gap, float(cfg.time_scale))
  tx = state_lib.make_optimizer(cfg.optimizer)
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  microbatches = run.microbatches
  guided = spec.num_classes > 0 and (cfg.omega != 1.0 or cfg.kappa != 0.0)

  def export_fn(params, x, sigma, labels=None, train=False, rngs=None):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    t = sigma / (1.0 + sigma)
    z = x / expand(1.0 + sigma, x)
    return z - expand(t, z) * u_apply(params, z, t, t, labels, train=train, rngs=rngs)

  def init(rng, batch, teacher=None):
    del teacher
    x, _ = base.batch_inputs(batch, spec)
    rng_net, state_rng = jax.random.split(rng)
    params = sc.init_network(net, rng_net, x, jnp.zeros((x.shape[0], spec.num_classes + gap), jnp.float32))
    return state_lib.create(state_rng, {G: params}, {G: tx}, ema_roles=(G,))

  def loss_fn(params, mb, rng_dropout):
    rngs = sc.dropout_rngs(rng_dropout)
    labels, r, t = mb["labels"], mb["r"], mb["t"]
    u_fn = lambda p, z, rr, tt, lab: u_apply(p, z, rr, tt, lab, train=True, rngs=rngs)
    z_t = interpolate(mb["x"], mb["e"], t)
    v = mb["e"] - mb["x"]
    if guided:
      u_c = sg(u_fn(params, z_t, t, t, labels))
      u_u = sg(u_fn(params, z_t, t, t, jnp.zeros_like(labels)))
      kept = jnp.any(labels > 0, axis=1)
      v = jnp.where(expand(kept, v), guided_velocity(v, u_c, u_u, cfg.omega, cfg.kappa), v)
    u, u_tgt = meanflow_target(lambda z, rr, tt: u_fn(params, z, rr, tt, labels), z_t, r, t, v)
    per_sample, sq = adaptive_loss(u, u_tgt, cfg.adaptive_p, cfg.adaptive_c)
    return jnp.mean(per_sample), {"mse": jnp.mean(sq)}

  def train_step(state, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    (rng,) = state.step_rng(G)
    rng_t, rng_e, rng_drop, rng_dropout = jax.random.split(rng, 4)
    r, t = sample_times(rng_t, x.shape[0], dist=cfg.time_dist, p_mean=cfg.p_mean, p_std=cfg.p_std, ratio=cfg.ratio)
    if labels is not None and cfg.class_dropout > 0:
      labels = jnp.where(jax.random.uniform(rng_drop, (x.shape[0], 1)) < cfg.class_dropout, 0.0, labels)
    mb = dict(x=x, labels=labels, e=jax.random.normal(rng_e, x.shape, x.dtype), r=r, t=t)
    (loss, aux), grads = accumulate_gradients(loss_fn, state.params[G], mb, rng_dropout,
                                                num_microbatches=microbatches, has_aux=True)
    state, metrics = state_lib.apply_gradients(state, G, grads, tx)
    decay = ema_decay(state.step)
    state = state.replace(step=state.step + 1,
                          ema={**state.ema, G: state_lib.ema_update(state.ema[G], state.params[G], decay)})
    metrics.update({f"{G}/loss": loss, f"{G}/mse": aux["mse"], f"{G}/ema_decay": decay,
                    f"{G}/fraction_r_neq_t": jnp.mean((r < t).astype(jnp.float32))})
    return state, metrics

  def sample(state, rng, num, labels=None, steps=None):
    """`steps` (default objective.meanflow.sample_steps) steps of the average-velocity sampler, EMA network."""
    rng_labels, rng_e = jax.random.split(rng)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    e = jax.random.normal(rng_e, (num,) + tuple(spec.shape))
    u_fn = lambda z, r, t: u_apply(state.ema[G], z, r, t, onehot)
    return meanflow_sampler(u_fn, e, steps or int(cfg.sample_steps))

  return base.Objective(name="meanflow", init=init, train_step=train_step, sample=sample, export_role=G,
                        apply_fn=export_fn, accumulates_gradients=True)

