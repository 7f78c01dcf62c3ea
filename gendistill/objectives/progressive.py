"""`progressive`: progressive distillation (Salimans & Ho 2022), as in google-research/diffusion_distillation
(docs/objectives/trajectory_distillation.md).

A student learns to match two DDIM steps of its teacher with one; then it becomes the teacher and a new student
(started from it) halves the steps again. All halving rounds are phases of one run: round r = min(step //
steps_per_round, R - 1), R = log2(teacher_steps / final_steps); its student takes N_r = teacher_steps / 2^(r+1)
steps. Round 0's teacher is the run's teacher; the teacher of round r >= 1 is kept in state.extra['teacher'] (the
round r - 1 student, copied there at the end of that round's last step, when the optimizer state is also reset),
so a resumed run continues exactly.

Time is the cosine log-SNR schedule lambda(u) = -2 ln tan(a u + b), b = arctan(e^(-lambda_max/2)),
a = arctan(e^(-lambda_min/2)) - b. The networks are this library's denoisers D(y; sigma) on y = x + sigma n, and
z_t = alpha_t x + sigma_vp eps is alpha_t y at sigma = exp(-lambda/2) = tan(a u + b), so u is simply a noise level
and a DDIM step z_t -> z_s is the Euler step y_s = x_hat + (sigma_s/sigma_t)(y_t - x_hat) (samplers.ddim_step).

One step: i ~ U{0..N-1}, u = (i+1)/N, y_t = x + sigma(u) n; the teacher takes two DDIM steps u -> u - 0.5/N ->
u - 1/N giving y''; the target is the x_tilde for which one DDIM step of the student from y_t lands on y'':
x_tilde = (y'' - (sigma''/sigma_t) y_t)/(1 - sigma''/sigma_t) (= (z'' - (sigma''_vp/sigma_vp,t) z_t)/(alpha'' -
(sigma''_vp/sigma_vp,t) alpha_t) in VP form); for i = 0 the target is the teacher's x_hat at the midpoint.
loss = mean_b w(SNR) mean_pix (D_student(y_t; sigma_t) - x_tilde)^2, SNR = 1/sigma_t^2, with
  snr_trunc  w = max(SNR, 1)   (x-prediction with truncated-SNR weighting: the released CIFAR-10 config)
  v_mse      w = SNR + 1       (the v-MSE: ||v_hat - v_tilde||^2 = (1 + SNR) ||x_hat - x_tilde||^2)
  snr        w = SNR           (eps-MSE),   constant  w = 1.
The network's own parameterisation is the teacher's (the student starts from it): a v-prediction network is the
EDM preconditioning with sigma_data = 1 (c_skip = alpha^2, c_out = sigma_vp alpha, c_in = alpha in y-space), so
PD's v-model is `network.sigma_data = 1` with `loss = 'v_mse'`.

Optimizer as the official config: Adam, gradient clipping 1.0, the learning rate annealed linearly to 0 over
each round (`lr_anneal`), a fresh optimizer state per round, no EMA. Sampling: DDIM with the current round's N
by default (samplers.ddim_sampler), optionally clipping x_hat (`clip_denoised`, the official eval setting for
images); asked for the previous round's N (2 after a run down to 1 step), it samples the previous round's student,
which the state keeps as the last round's teacher, so one run yields both its 1-step and its 2-step students.
Deviation: the official schedule spans lambda in [-20, 20]; the presets use the range of an EDM teacher
(sigma in [0.002, 80]) since this library's teachers are EDM models that never saw larger or smaller sigma.
"""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gendistill import state as state_lib
from gendistill.diffusion import samplers
from gendistill.diffusion.noise import expand
from gendistill.objectives import base, register
from gendistill.objectives import score_common as sc
from gendistill.sharding.accumulation import accumulate_gradients

G = sc.GENERATOR
TEACHER = "teacher"
sg = jax.lax.stop_gradient
EDM_LOGSNR_RANGE = (-2 * math.log(80.0), -2 * math.log(0.002))   # sigma in [0.002, 80]


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      teacher_steps=1024,       # DDIM steps of the original teacher (PD: 8192 on CIFAR-10, 1024 on ImageNet 64)
      final_steps=1,            # the last round's student steps
      steps_per_round=50_000,   # training steps of each halving
      logsnr_min=-20.0,         # the cosine schedule's range
      logsnr_max=20.0,
      loss="snr_trunc",         # snr_trunc | v_mse | snr | constant
      clip_denoised=0.0,        # > 0: the sampler clips x_hat to [-c, c]
      init="auto",              # auto | teacher | random: the first student from the teacher's parameters
      lr_anneal="linear",       # linear (to 0 over each round) | constant
      optimizer=state_lib.optimizer_config(lr=5e-5, b1=0.9, b2=0.999, grad_clip_norm=1.0),
  ))


# ------------------------------------------------------------------------------------------------------------
# The schedule of rounds and the target (pure functions).


def num_rounds(teacher_steps: int, final_steps: int) -> int:
  ratio = teacher_steps // max(final_steps, 1)
  if final_steps < 1 or teacher_steps % final_steps or ratio < 2 or ratio & (ratio - 1):
    raise ValueError(f"progressive: teacher_steps / final_steps must be a power of 2 >= 2; got {teacher_steps} / "
                     f"{final_steps}.")
  return int(math.log2(ratio))


def round_of(step, steps_per_round: int, rounds: int):
  """The halving round a training step belongs to (the last round goes on past its end)."""
  return jnp.minimum(jnp.asarray(step, jnp.int32) // int(steps_per_round), rounds - 1)


def student_steps(round_index, teacher_steps: int):
  """N_r = teacher_steps / 2^(r+1): the sampling steps the round's student learns."""
  return jnp.right_shift(jnp.int32(teacher_steps), jnp.asarray(round_index, jnp.int32) + 1)


def two_step_target(teacher_fn, y_t, sigma_t, sigma_mid, sigma_s, last):
  """The student's x target from two teacher DDIM steps sigma_t -> sigma_mid -> sigma_s (per-sample [N]) in
  y-space: x_tilde = (y'' - (sigma_s/sigma_t) y_t)/(1 - sigma_s/sigma_t), and the teacher's x_hat at the midpoint
  where `last` (i = 0)."""
  y_mid, _ = samplers.ddim_step(teacher_fn, y_t, sigma_t, sigma_mid)
  y_s, x_mid = samplers.ddim_step(teacher_fn, y_mid, sigma_mid, sigma_s)
  ratio = expand(sigma_s / sigma_t, y_t)
  x_tilde = (y_s - ratio * y_t) / (1.0 - ratio)
  return jnp.where(expand(last, y_t), x_mid, x_tilde)


def loss_weight(sigma, kind="snr_trunc"):
  snr = 1.0 / sigma**2
  if kind == "snr_trunc":
    return jnp.maximum(snr, 1.0)
  if kind == "v_mse":
    return snr + 1.0
  if kind == "snr":
    return snr
  if kind == "constant":
    return jnp.ones_like(sigma)
  raise ValueError(f"progressive.loss must be snr_trunc, v_mse, snr or constant; got {kind!r}.")


def levels(i, num_steps, logsnr_min=-20.0, logsnr_max=20.0):
  """(sigma_t, sigma_mid, sigma_s) of student step i of num_steps: u = (i+1)/N, u - 0.5/N, u - 1/N."""
  n = jnp.asarray(num_steps, jnp.float32)
  u = (jnp.asarray(i, jnp.float32) + 1.0) / n
  sigma = functools.partial(samplers.cosine_sigma, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  return sigma(u), sigma(u - 0.5 / n), sigma(u - 1.0 / n)


def student_loss(apply_fn, params, y_t, sigma_t, target, labels, rng_dropout, kind="snr_trunc"):
  """mean_b w(sigma_t) mean_pix (D(y_t; sigma_t) - target)^2; returns (loss, per-sample losses)."""
  pred = apply_fn(params, y_t, sigma_t, labels, train=True, rngs=sc.dropout_rngs(rng_dropout))
  per_sample = loss_weight(sigma_t, kind) * sc.per_sample_mean((pred - sg(target)) ** 2)
  return jnp.mean(per_sample), per_sample


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The `optimizer` section's optimizer, its step annealed linearly to 0 over each round (`lr_anneal`). The
  optimizer state (so its count) restarts every round, so the factor falls from 1 to 0 within each round."""
  tx = state_lib.make_optimizer(cfg.optimizer)
  if cfg.lr_anneal == "constant":
    return tx
  if cfg.lr_anneal != "linear":
    raise ValueError(f"progressive.lr_anneal must be 'linear' or 'constant'; got {cfg.lr_anneal!r}.")
  per_round = int(cfg.steps_per_round)
  return optax.chain(tx, optax.scale_by_schedule(lambda count: jnp.maximum(1.0 - count / per_round, 0.0)))


# ------------------------------------------------------------------------------------------------------------
# The objective.


@register("progressive", default_config, {G: "denoiser"})
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  net = networks[G]
  apply_fn = net.apply
  rounds = num_rounds(cfg.teacher_steps, cfg.final_steps)
  per_round = int(cfg.steps_per_round)
  tx = make_optimizer(cfg)
  loss_weight(jnp.ones(1), cfg.loss)   # validates the name
  schedule = dict(logsnr_min=cfg.logsnr_min, logsnr_max=cfg.logsnr_max)

  def init(rng, batch, teacher=None):
    x, labels = base.batch_inputs(batch, spec)
    rng_net, state_rng = jax.random.split(rng)
    params, _ = sc.init_from_teacher(net, rng_net, x, labels, teacher, cfg.init)
    return state_lib.create(state_rng, {G: params}, {G: tx}, extra={TEACHER: jax.tree.map(jnp.copy, params)})

  def loss_fn(params, mb, rng_dropout):
    return student_loss(apply_fn, params, mb["y"], mb["sigma"], mb["target"], mb["labels"], rng_dropout,
                        cfg.loss)[0]

  def train_step(state, batch, teacher=None):
    if teacher is None:
      raise ValueError("Progressive distillation needs a teacher (config.teacher).")
    x, labels = base.batch_inputs(batch, spec)
    (rng,) = state.step_rng(G)
    rng_i, rng_noise, rng_dropout = jax.random.split(rng, 3)
    r = round_of(state.step, per_round, rounds)
    n_steps = student_steps(r, cfg.teacher_steps)
    i = jax.random.randint(rng_i, (x.shape[0],), 0, n_steps)
    sigma_t, sigma_mid, sigma_s = levels(i, n_steps, **schedule)
    y_t = x + expand(sigma_t, x) * jax.random.normal(rng_noise, x.shape, x.dtype)

    def target_with(fn):
      return two_step_target(fn, y_t, sigma_t, sigma_mid, sigma_s, i == 0)
    # Round 0 distils the run's teacher (any architecture, e.g. the analytic one), later rounds the stored one.
    target = jax.lax.cond(
        r == 0,
        lambda: target_with(lambda y, s: teacher.apply_fn(teacher.params, y, s, labels)),
        lambda: target_with(lambda y, s: apply_fn(state.extra[TEACHER], y, s, labels)))
    mb = dict(y=y_t, sigma=sigma_t, target=sg(target), labels=labels)
    loss, grads = accumulate_gradients(loss_fn, state.params[G], mb, rng_dropout,
                                       num_microbatches=run.microbatches)
    state, metrics = state_lib.apply_gradients(state, G, grads, tx)

    # End of a round's last step: the student becomes the next round's teacher (and the next student starts
    # from it, i.e. goes on from its own parameters) with a fresh optimizer state.
    done = state.step + 1
    switch = jnp.logical_and(done % per_round == 0, done // per_round < rounds)
    new = state.params[G]
    keep = lambda a, b: jax.tree.map(lambda u, v: jnp.where(switch, u, v), a, b)
    state = state.replace(step=done, extra={**state.extra, TEACHER: keep(new, state.extra[TEACHER])},
                          opt_state={**state.opt_state, G: keep(tx.init(new), state.opt_state[G])})
    metrics.update({f"{G}/loss": loss, f"{G}/round": r, f"{G}/student_steps": n_steps,
                    f"{G}/new_round": switch.astype(jnp.float32)})
    return state, metrics

  def sample(state, rng, num, labels=None, steps=None):
    """DDIM with the student; `steps` defaults to the steps of the round of the last completed train step. With
    the previous round's steps (e.g. 2 after a run down to 1) it samples that round's student, which the state
    keeps as the current round's teacher; any other `steps` runs the current student's network."""
    rng_labels, rng_z = jax.random.split(rng)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    z = jax.random.normal(rng_z, (num,) + tuple(spec.shape))
    params = state.params[G]
    if steps is None:
      steps = student_steps(round_of(jnp.maximum(state.step - 1, 0), per_round, rounds), cfg.teacher_steps)
    else:   # extra[TEACHER] holds the student of the round before the one the next step trains (none in round 0)
      kept_round = round_of(state.step, per_round, rounds) - 1
      use_kept = jnp.logical_and(kept_round >= 0,
                                 student_steps(jnp.maximum(kept_round, 0), cfg.teacher_steps) == steps)
      params = jax.tree.map(lambda kept, current: jnp.where(use_kept, kept, current), state.extra[TEACHER], params)
    fn = lambda y, s: apply_fn(params, y, s, onehot)
    return samplers.ddim_sampler(fn, z, steps, clip_denoised=cfg.clip_denoised or None, **schedule)

  return base.Objective(name="progressive", init=init, train_step=train_step, sample=sample, export_role=G,
                        apply_fn=apply_fn, accumulates_gradients=True)
