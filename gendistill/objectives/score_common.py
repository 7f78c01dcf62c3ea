"""Pieces shared by the score-distillation objectives (SiD, SiDA, Diff-Instruct/VSD, DMD/DMD2, f-distill).

All of them train a one-step (or few-step) generator G with a fake score f_psi fitted to G's samples, against a
frozen teacher f_phi. This module holds what they have in common; each objective module holds its own losses
and schedule (docs/objectives/score_distillation.md).

- Networks: the student networks (generator, fake score) are received (for a distillation run the adapter
  builds them from the teacher's network config), and start from the teacher's parameters when the trees
  match (`init_from_teacher`). A teacher whose parameters do not match (the analytic Gaussian-mixture teacher,
  or a teacher of another architecture) leaves them randomly initialised.
- Generator: one step x = G(sigma_init z; sigma_init, c), z ~ N(0, I) (SiD, DI, DMD), or a few steps on a
  decreasing sigma grid with fresh noise in between (DMD2).
- Noise levels: SiD's uniform-in-Karras-rho-space over [0, t_max/1000], and DMD's integer index into the
  ascending 1000-step Karras grid. (The fake scores' denoising loss is gendistill.diffusion.losses; when a role
  updates is gendistill.objectives.gating.)
- The f-divergence weights h(r) = r^2 f''(r) of f-distill.
- Small numerics: per-sample finite masks, official-code `nan_to_num` of gradients, joint gradient clipping,
  SiDA's binary cross-entropy.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from absl import logging

from gendistill import state as state_lib
from gendistill.diffusion import losses
from gendistill.diffusion import noise as noise_lib
from gendistill.diffusion import samplers
from gendistill.objectives import base

sg = jax.lax.stop_gradient
expand = noise_lib.expand
per_sample_sum, per_sample_mean, finite_rows = losses.per_sample_sum, losses.per_sample_mean, losses.finite_rows

GENERATOR = "generator"
FAKE_SCORE = "fake_score"
CRITIC = "critic"


# ------------------------------------------------------------------------------------------------------------
# Networks (received from the factory's `networks`; see base.py).


def same_structure(a, b) -> bool:
  """True if two pytrees (arrays or ShapeDtypeStructs) have the same structure and leaf shapes."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(tuple(x.shape) == tuple(y.shape) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def init_network(network, rng, x, labels):
  return network.init(rng, x, jnp.ones((x.shape[0],), jnp.float32), labels)


def init_from_teacher(network, rng, x, labels, teacher, mode: str = "auto"):
  """Student parameters: a copy of the teacher's if `mode` allows and the trees match, else a fresh init.

  mode: 'auto' (copy when the trees match), 'teacher' (must match), 'random' (never copy). Returns
  (params, copied: bool), `copied` static. The copy is a real copy: the train step donates the state, and the
  teacher's buffers must survive that.
  """
  if mode not in ("auto", "teacher", "random"):
    raise ValueError(f"init mode must be 'auto', 'teacher' or 'random'; got {mode!r}.")
  shapes = jax.eval_shape(lambda: init_network(network, rng, x, labels))
  # A teacher carrying `init_params` (teacher.init_workdir, teachers.with_init_network): the students start from
  # that network, which must match.
  given = getattr(teacher, "init_params", None)
  source = given if given is not None else None if teacher is None else teacher.params
  matches = source is not None and same_structure(source, shapes)
  if given is not None and mode != "random" and not matches:
    raise ValueError("The network of teacher.init_workdir does not match the student network (the run's `network` "
                     "section): the students cannot start from it. Train that run with the same network section, "
                     "or clear teacher.init_workdir.")
  if mode == "teacher" and not matches:
    raise ValueError("The teacher's parameters do not match the student network: the student networks cannot "
                     "start from the teacher. Use the teacher's network config, or init='auto'/'random'.")
  # Said once per process (this runs at trace time, possibly several times): users must know which start they got.
  if matches and mode != "random":
    logging.log_first_n(logging.INFO, "Student networks start as copies of the %s parameters.", 1,
                        "teacher.init_workdir network's" if given is not None else "teacher's")
    return jax.tree.map(lambda p, s: jnp.array(p, dtype=s.dtype, copy=True), source, shapes), True
  if teacher is not None:
    why = "init='random'" if mode == "random" else "the teacher's parameters do not match the student network"
    logging.log_first_n(logging.WARNING, "Student networks start from random weights (%s); set the objective's "
                        "init='teacher' to make a mismatch an error.", 1, why)
  return init_network(network, rng, x, labels), False


def generator_and_fake_score_init(net_g, net_f, spec, tx, mode: str):
  """init(rng, batch, teacher) of a generator + fake score state (both from the teacher when `mode` allows),
  with the generator's EMA (SiD, SiDA, Diff-Instruct)."""
  def init(rng, batch, teacher=None):
    x, labels = base.batch_inputs(batch, spec)
    rng_g, rng_f, state_rng = jax.random.split(rng, 3)
    params_g, _ = init_from_teacher(net_g, rng_g, x, labels, teacher, mode)
    params_f, _ = init_from_teacher(net_f, rng_f, x, labels, teacher, mode)
    return state_lib.create(state_rng, {GENERATOR: params_g, FAKE_SCORE: params_f}, tx, ema_roles=(GENERATOR,))
  return init


def dropout_rngs(rng):
  return {"dropout": rng}


# ------------------------------------------------------------------------------------------------------------
# The generator.


def generate(apply_fn, params, z, sigma_init, labels, train=False, rngs=None):
  """One-step generation x = G(sigma_init z; sigma_init, c) (SiD, Diff-Instruct, DMD); z ~ N(0, I)."""
  sigma = jnp.full((z.shape[0],), sigma_init, jnp.float32)
  return apply_fn(params, sigma_init * z, sigma, labels, train=train, rngs=rngs)


def generator_draw(apply_g, params_g, labels, keys, shape, cfg, *, sigma_kind="sid"):
  """The draws of one generator half-step (SiD, SIM, Diff-Instruct): x_g = G(sigma_init z) with the generator's
  dropout as configured, the diffusion level sigma (SiD's t-schedule, or EDM's log-normal) and the noise n.
  keys = (z, dropout, sigma, noise) keys; cfg holds sigma_init, generator_dropout and the sigma settings."""
  rng_z, rng_drop, rng_sigma, rng_noise = keys
  x_g = generate(apply_g, params_g, jax.random.normal(rng_z, shape), cfg.sigma_init, labels,
                 train=cfg.generator_dropout, rngs=dropout_rngs(rng_drop))
  if sigma_kind == "lognormal":
    sigma = noise_lib.lognormal_sigma(rng_sigma, shape[0], cfg.p_mean, cfg.p_std)
  else:
    sigma = sid_sigma(rng_sigma, shape[0], cfg.t_max, cfg.sigma_min, cfg.sigma_max, cfg.rho)
  return x_g, sigma, jax.random.normal(rng_noise, shape)


def fake_score_loss(apply_g, apply_f, params_f, params_g, labels, rng, *, shape, sigma_init, p_mean, p_std,
                    sigma_data):
  """The fake score's step of the one-step score distillers (diff_instruct, sim): EDM's denoising loss on
  sg[G(z)], z ~ N(0, I) of `shape`, the generator in eval mode."""
  rng_z, rng_loss = jax.random.split(rng)
  x_g = sg(generate(apply_g, params_g, jax.random.normal(rng_z, shape), sigma_init, labels))
  loss, _ = losses.edm_loss(apply_f, params_f, x_g, labels, rng_loss, p_mean=p_mean, p_std=p_std,
                            sigma_data=sigma_data, train=True)
  return loss


def few_step_generate(apply_fn, params, z, sigmas, labels, rng, num_steps=None):
  """Multi-step generation on the decreasing grid `sigmas` (DMD2): x = sigma_0 z; x0 = G(x; sigma_k);
  x = x0 + sigma_{k+1} eps with fresh eps. `num_steps` (static, <= len(sigmas)) truncates the grid."""
  sigmas = tuple(sigmas)[:num_steps or len(sigmas)]
  x = sigmas[0] * z
  x0 = x
  for k, s in enumerate(sigmas):
    x0 = apply_fn(params, x, jnp.full((z.shape[0],), s, jnp.float32), labels)
    if k + 1 < len(sigmas):
      eps = jax.random.normal(jax.random.fold_in(rng, k), z.shape, z.dtype)
      x = x0 + sigmas[k + 1] * eps
  return x0


def backward_simulation(apply_fn, params, z, sigmas, labels, rng, k):
  """DMD2's backward simulation: run G without gradient for `k` (traced, 0 <= k < len(sigmas)) steps from
  pure noise sigma_0 z, and return the noisy input at level sigma_k and sigma_k itself. k = 0 gives sigma_0 z."""
  sigmas_arr = jnp.asarray(sigmas, jnp.float32)
  n = z.shape[0]

  def body(j, x):
    x0 = apply_fn(params, x, jnp.full((n,), sigmas_arr[j]), labels)
    eps = jax.random.normal(jax.random.fold_in(rng, j), z.shape, z.dtype)
    return x0 + sigmas_arr[j + 1] * eps

  x = jax.lax.fori_loop(0, k, body, sigmas_arr[0] * z)
  return sg(x), sigmas_arr[k]


# ------------------------------------------------------------------------------------------------------------
# Noise levels.


def sid_sigma(rng, n, t_max=800, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """SiD's generator-loss sigma: u ~ U(0, t_max/1000), sigma = (max^(1/rho) + (1-u)(min^(1/rho) - max^(1/rho)))^rho.

  t_max = 800 gives sigma in [0.002, 24.41]: uniform in Karras rho-space over the lower 80% of the grid.
  """
  u = jax.random.uniform(rng, (n,)) * t_max / 1000.0
  return samplers.karras_sigma(1 - u, sigma_min, sigma_max, rho)


def karras_grid(num=1000, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """DMD's noise table: the `num`-step Karras grid in ascending order (index 0 = sigma_min)."""
  return samplers.karras_sigmas(num, sigma_min, sigma_max, rho)[:-1][::-1]


def grid_sigma(rng, n, grid, min_index, max_index):
  """sigma = grid[t], t ~ U{min_index .. max_index} (inclusive)."""
  t = jax.random.randint(rng, (n,), min_index, max_index + 1)
  return grid[t]


# ------------------------------------------------------------------------------------------------------------
# Reductions and numerics.


def nan_to_num_grads(grads, posinf=1e5, neginf=-1e5):
  """SiD/Diff-Instruct: torch.nan_to_num(grad, nan=0, posinf=1e5, neginf=-1e5) on every gradient."""
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=posinf, neginf=neginf), grads)


def sanitised_update(state, role, grads, tx, nan_to_num: bool, enabled=True):
  """One optimizer step of `role`; with `nan_to_num` (official SiD/Diff-Instruct) the raw gradients' non-finite
  entries are counted first (a sanitised NaN is still a skipped update in the run's totals), then replaced."""
  if nan_to_num:
    state = state_lib.count_nonfinite(state, role, grads, enabled)
    grads = nan_to_num_grads(grads)
  return state_lib.apply_gradients(state, role, grads, tx, enabled=enabled)


def clip_by_joint_norm(grads: dict, max_norm: float):
  """Clip several roles' gradients by their joint global norm (torch.nn.utils.clip_grad_norm_ over the union
  of the parameters, as DMD2 does for the fake score and its classifier head). max_norm <= 0: unchanged."""
  norm = optax.tree.norm(grads)
  if max_norm <= 0:
    return grads, norm
  scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
  return jax.tree.map(lambda g: g * scale, grads), norm


# ------------------------------------------------------------------------------------------------------------
# SiDA's binary cross-entropy (the non-saturating DMD2 / f-distill losses are in gendistill.objectives.gan).


def bce_with_logits(logits, target):
  """Elementwise binary cross-entropy of a logit against a 0/1 target (torch's BCEWithLogitsLoss, no mean)."""
  return jnp.where(target > 0.5, jax.nn.softplus(-logits), jax.nn.softplus(logits))


# ------------------------------------------------------------------------------------------------------------
# f-divergences (f-distill, docs/objectives/score_distillation.md): f(r) and h(r) = r^2 f''(r), r = p_t / q_t.

F_DIVERGENCES = {
    # name: (f(r), h(r))
    "reverse_kl": (lambda r: -jnp.log(r), lambda r: jnp.ones_like(r)),
    "softened_rkl": (lambda r: (r + 1) * jnp.log((r + 1) / (2 * r)), lambda r: 1 / (1 + r)),
    "js": (lambda r: r * jnp.log(r) - (1 + r) * jnp.log((1 + r) / 2), lambda r: r / (1 + r)),
    "squared_hellinger": (lambda r: (jnp.sqrt(r) - 1) ** 2, lambda r: 0.5 * jnp.sqrt(r)),
    "forward_kl": (lambda r: r * jnp.log(r), lambda r: r),
    "jeffreys": (lambda r: (r - 1) * jnp.log(r), lambda r: 1 + r),
    "neyman_chi2": (lambda r: (1 - r) ** 2 / r, lambda r: 2 / r),
}


def f_divergence_weight(name: str) -> Callable:
  if name not in F_DIVERGENCES:
    raise ValueError(f"Unknown f-divergence {name!r}; expected one of {sorted(F_DIVERGENCES)}.")
  return F_DIVERGENCES[name][1]


# ------------------------------------------------------------------------------------------------------------
# Config sections and the pieces of build() every objective repeats.


def step_ema(state, ema_decay, role=GENERATOR):
  """EMA of `role` after this step's update; returns (state, decay)."""
  decay = ema_decay(state.step)
  ema = dict(state.ema)
  ema[role] = state_lib.ema_update(state.ema[role], state.params[role], decay)
  return state.replace(ema=ema), decay


def make_sampler(apply_fn, spec, sigma_init: Optional[float] = None, sigmas=None):
  """`sample(state, rng, num, labels=None, steps=None)` from the generator's EMA: one step at sigma_init, or
  `steps` (default all) steps on the decreasing grid `sigmas` for a few-step generator."""
  def sample(state, rng, num, labels=None, steps=None):
    rng_labels, rng_z, rng_steps = jax.random.split(rng, 3)
    onehot = base.sample_labels(rng_labels, num, labels, spec.num_classes)
    z = jax.random.normal(rng_z, (num,) + tuple(spec.shape))
    params = state.ema[GENERATOR]
    if sigmas:
      return few_step_generate(apply_fn, params, z, sigmas, onehot, rng_steps, steps)
    return generate(apply_fn, params, z, sigma_init, onehot)
  return sample
