"""`adversarial`: a one-step generator against a critic (a GAN), from scratch or from a teacher's weights.

Roles: 'generator' G and 'critic' D. G is the library's preconditioned Denoiser used as a one-step generator,
x = G(sigma_g z; sigma_g, c) with z ~ N(0, I) (the convention of the distillation objectives, so G can also start
from a teacher's parameters: `init='auto'` copies them when a teacher of the same architecture is given).
sigma_g defaults to 1: G(z) = 0.2 z + 0.45 F(0.89 z; c_noise(1)), which starts as a scaled Gaussian. The
distillation objectives' sigma_g = 80 gives G ~ 0.5 F(z), and since the backbones' output layers start at ~0
(EDM's init), a randomly initialised generator then starts collapsed to one point: every sample receives the same
critic gradient and the spread never grows (measured on toy2d: 0 of 8 modes after 2000 steps at sigma_g = 80,
8 of 8 after 500 at sigma_g = 1). Use sigma_g = 80 only when G starts from a teacher. D is a critic
from `gendistill.nets.discriminator` (MLP for vectors, conv for images; class-conditional by projection when the
data has labels; optionally conditioned on the instance-noise timestep). The losses, R1 and the instance noise
are the shared pieces of `gendistill.objectives.gan`.

One train_step = one critic step, plus a generator step on every `critic_steps`-th call:
  critic:    L_D = loss_D(D(y_real), D(y_fake)) + lazy R1 on y_real (gamma, every `r1_every` steps, scaled by it),
             y = Diffusion-GAN instance noise of x (or x itself), fakes sg[G(z)] made with the current G;
  generator: on steps with step % critic_steps == critic_steps - 1, L_G = loss_G(D(y(G(z)))) against the critic
             just updated; the generator's EMA is updated with it. The generator branch is a `lax.cond`: critic-
             only steps neither compute nor change anything of the generator (params, optimizer state, EMA).
loss: 'ns' (non-saturating, softplus) or 'hinge'. Fakes take the batch's labels (class-conditional data).
Diffusion-GAN's p (which sets T) lives in `state.extra['diffusion_p']` and adapts from sign D(x).
"""
import jax
import jax.numpy as jnp
import ml_collections

from gendistill import state as state_lib
from gendistill.nets import discriminator
from gendistill.objectives import base, gan, gating, register
from gendistill.objectives import score_common as sc

G, C = sc.GENERATOR, sc.CRITIC


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      loss="ns",                # ns (non-saturating) | hinge
      generator_sigma=1.0,      # x = G(sigma_g z; sigma_g); 80 when G starts from a teacher (see above)
      critic_steps=1,           # critic steps per generator step
      r1_gamma=0.1,             # R1 weight gamma (penalty gamma/2 E||grad D(x)||^2); 0 disables
      r1_every=16,              # lazy R1: every k critic steps, scaled by k
      init="auto",              # auto | teacher | random: G from the teacher's params when the trees match
      instance_noise=gan.instance_noise_config("none"),
      critic=discriminator.critic_config(),
      generator_optimizer=state_lib.optimizer_config(lr=2e-4, b1=0.5, b2=0.999),
      critic_optimizer=state_lib.optimizer_config(lr=2e-4, b1=0.5, b2=0.999),
      ema=state_lib.ema_config(halflife_kimg=0.0, decay=0.999),
  ))


def critic_logits_fn(critic, params, noise_labels, labels):
  """x -> D(x; t, c) [N] for the shared losses and R1."""
  return lambda x: critic.apply(params, x, noise_labels, labels)


def critic_update(state, critic, tx, real, fake, labels, rng, *, cfg, batch_size):
  """One critic step on real and (detached) fake inputs, with instance noise and lazy R1; returns (state, metrics).

  Also moves Diffusion-GAN's p. Shared by `adversarial` and `add`.
  """
  rng_real, rng_fake = jax.random.split(rng)
  noise_cfg = cfg.instance_noise
  p = state.extra.get("diffusion_p", jnp.zeros((), jnp.float32))
  y_real, t_real = gan.diffuse(rng_real, real, p, noise_cfg)
  y_fake, t_fake = gan.diffuse(rng_fake, jax.lax.stop_gradient(fake), p, noise_cfg)

  def loss_fn(params):
    return gan.discriminator_objective(
        critic_logits_fn(critic, params, t_real, labels), y_real, y_fake, kind=cfg.loss, r1_gamma=cfg.r1_gamma,
        r1_every=cfg.r1_every, step=state.step, fake_logits_fn=critic_logits_fn(critic, params, t_fake, labels))

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params[C])
  state, opt_metrics = state_lib.apply_gradients(state, C, grads, tx)
  metrics = {f"{C}/loss": loss, **metrics, **opt_metrics}
  if "diffusion_p" in state.extra:
    new_p = gan.update_diffusion_p(p, metrics[f"{C}/real_sign"], state.step, noise_cfg, batch_size)
    state = state.replace(extra={**state.extra, "diffusion_p": new_p})
    metrics["diffusion/p"] = new_p
    metrics["diffusion/T"] = gan.diffusion_num_steps(new_p, noise_cfg.t_min, noise_cfg.t_max).astype(jnp.float32)
  return state, metrics


def generator_adversarial_loss(critic, critic_params, fake, labels, rng, p, *, cfg):
  """loss_G(D(y(fake))) with the critic's parameters frozen (gradient only through `fake`)."""
  y, t = gan.diffuse(rng, fake, p, cfg.instance_noise)
  logits = critic.apply(jax.lax.stop_gradient(critic_params), y, t, labels)
  return gan.generator_loss(cfg.loss, logits), logits


def init_state(rng, batch, teacher, *, spec, net, critic, cfg, tx_g, tx_c):
  """net, critic: the generator's and the critic's Networks."""
  """Generator (from the teacher when allowed) + critic + EMA of the generator + instance-noise p."""
  x, labels = base.batch_inputs(batch, spec)
  rng_g, rng_c, rng_state = jax.random.split(rng, 3)
  params_g, _ = sc.init_from_teacher(net, rng_g, x, labels, teacher, cfg.init)
  params_c = critic.init(rng_c, x, jnp.zeros((x.shape[0],), jnp.float32), labels)
  extra = {}
  if cfg.instance_noise.kind != "none":
    extra["diffusion_p"] = jnp.asarray(cfg.instance_noise.p_init, jnp.float32)
  return state_lib.create(rng_state, {G: params_g, C: params_c}, {G: tx_g, C: tx_c}, ema_roles=(G,), extra=extra)


def generator_turn(step, critic_steps: int) -> gating.Gate:
  """The generator updates on the last of every `critic_steps` steps (every step when critic_steps <= 1)."""
  return gating.gate(step, every=critic_steps, offset=int(critic_steps) - 1)


def gated_generator_update(state, turn: gating.Gate, loss_fn, tx, ema_decay, metric_names):
  """If `turn`: grad of loss_fn(params_g) -> (loss, aux metrics), optimizer step and EMA; else nothing at all.

  `metric_names` lists the aux metric keys, so the skipped branch can return zeros of the same structure.
  """
  def update(state):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params[G])
    state, opt_metrics = state_lib.apply_gradients(state, G, grads, tx)
    state, _ = sc.step_ema(state, ema_decay)
    return state, {f"{G}/loss": loss, **aux, **opt_metrics}

  def skip(state):
    names = (f"{G}/loss", *metric_names, f"{G}/grad_norm", f"{G}/skipped_nonfinite")
    return state, {k: jnp.zeros((), jnp.float32) for k in names}

  return gating.update(turn, update, skip, state)


ROLES = {G: "denoiser", C: "critic"}


@register("adversarial", default_config, ROLES)
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  gan._check_kind(cfg.loss)  # pylint: disable=protected-access
  net, critic = networks[G], networks[C]
  apply_fn = net.apply
  tx_g = state_lib.make_optimizer(cfg.generator_optimizer)
  tx_c = state_lib.make_optimizer(cfg.critic_optimizer)
  ema_decay = state_lib.ema_decay_fn(cfg.ema, run.batch_size)
  batch_size = run.batch_size
  sigma_g = cfg.generator_sigma

  def init(rng, batch, teacher=None):
    return init_state(rng, batch, teacher, spec=spec, net=net, critic=critic, cfg=cfg, tx_g=tx_g, tx_c=tx_c)

  def train_step(state, batch, teacher=None):
    del teacher
    x, labels = base.batch_inputs(batch, spec)
    rng_z, rng_critic, rng_gz, rng_gnoise, rng_drop = state.step_rng("z", "critic", "gen_z", "gen_noise", "dropout")
    fake = sc.generate(apply_fn, state.params[G], jax.random.normal(rng_z, x.shape), sigma_g, labels)
    state, metrics = critic_update(state, critic, tx_c, x, fake, labels, rng_critic, cfg=cfg, batch_size=batch_size)
    p = state.extra.get("diffusion_p", jnp.zeros((), jnp.float32))

    def loss_fn(params_g):
      fake = sc.generate(apply_fn, params_g, jax.random.normal(rng_gz, x.shape), sigma_g, labels, train=True,
                         rngs=sc.dropout_rngs(rng_drop))
      loss, logits = generator_adversarial_loss(critic, state.params[C], fake, labels, rng_gnoise, p, cfg=cfg)
      return loss, {f"{G}/fake_logits": jnp.mean(logits)}

    state, g_metrics = gated_generator_update(state, generator_turn(state.step, cfg.critic_steps), loss_fn, tx_g,
                                              ema_decay, (f"{G}/fake_logits",))
    return state.replace(step=state.step + 1), {**metrics, **g_metrics}

  return base.Objective(name="adversarial", init=init, train_step=train_step,
                        sample=sc.make_sampler(apply_fn, spec, sigma_init=sigma_g), export_role=G, apply_fn=apply_fn)


__all__ = ["default_config", "build", "critic_update", "generator_adversarial_loss", "init_state", "generator_turn",
           "gated_generator_update", "critic_logits_fn"]
