"""TrainState helpers: guarded optimizer steps and EMA."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gendistill import state as state_lib


def _state(tx=optax.sgd(0.1)):
  params = {"g": {"w": jnp.ones(3)}}
  return state_lib.create(jax.random.key(0), params, {"g": tx}, ema_roles=("g",))


def test_apply_gradients_steps_and_reports():
  state, metrics = state_lib.apply_gradients(_state(), "g", {"w": jnp.array([1.0, 2.0, 2.0])}, optax.sgd(0.1))
  np.testing.assert_allclose(state.params["g"]["w"], [0.9, 0.8, 0.8], rtol=1e-6)
  np.testing.assert_allclose(metrics["g/grad_norm"], 3.0, rtol=1e-6)
  assert float(metrics["g/skipped_nonfinite"]) == 0.0


def test_nonfinite_gradients_skip_the_update():
  tx = optax.adam(0.1)
  state, metrics = state_lib.apply_gradients(_state(tx), "g", {"w": jnp.array([1.0, jnp.nan, 0.0])}, tx)
  np.testing.assert_array_equal(state.params["g"]["w"], jnp.ones(3))
  assert float(metrics["g/skipped_nonfinite"]) == 1.0


def test_infinite_gradients_skip_the_update_and_huge_finite_ones_do_not():
  tx = optax.adam(0.1)
  state, metrics = state_lib.apply_gradients(_state(tx), "g", {"w": jnp.array([1.0, -jnp.inf, 0.0])}, tx)
  np.testing.assert_array_equal(state.params["g"]["w"], jnp.ones(3))
  assert float(metrics["g/skipped_nonfinite"]) == 1.0
  # Squares overflow float32 (the global norm is inf), but every entry is finite: the step is taken.
  tx = optax.sgd(1e-20)
  state, metrics = state_lib.apply_gradients(_state(tx), "g", {"w": jnp.array([1e20, -1e20, 0.0])}, tx)
  np.testing.assert_allclose(state.params["g"]["w"], [0.0, 2.0, 1.0], atol=1e-6)
  assert float(metrics["g/skipped_nonfinite"]) == 0.0


def test_update_program_grows_linearly_with_the_number_of_leaves():
  # The finiteness test used to be fused into every leaf's update fusion: a program quadratic in the leaves.
  def num_ands(n):
    params = {"g": {f"w{i}": jnp.ones(4) for i in range(n)}}
    tx = optax.adam(0.1)
    state = state_lib.create(jax.random.key(0), params, {"g": tx})
    step = jax.jit(lambda s, g: state_lib.apply_gradients(s, "g", g, tx))
    return step.lower(state, params["g"]).compile().as_text().count(" and(")
  small, large = num_ands(8), num_ands(32)
  assert large <= 5 * small + 8, (small, large)


def test_disabled_update_changes_nothing():
  tx = optax.adam(0.1)
  s0 = state_lib.create(jax.random.key(0), {"g": {"w": jnp.ones(3)}}, {"g": tx})
  s1, _ = state_lib.apply_gradients(s0, "g", {"w": jnp.ones(3)}, tx, enabled=jnp.array(False))
  jax.tree.map(np.testing.assert_array_equal, s1.params, s0.params)
  jax.tree.map(np.testing.assert_array_equal, s1.opt_state, s0.opt_state)


def _sgd_step_sizes(cfg, num_steps, enabled=None):
  """The learning rate of each update of plain SGD on the gradient 1 (the parameter moves by -lr)."""
  tx = state_lib.make_optimizer(cfg)
  state = state_lib.create(jax.random.key(0), {"g": jnp.zeros(())}, {"g": tx})
  sizes = []
  for i in range(num_steps):
    on = True if enabled is None else enabled[i]
    before = float(state.params["g"])
    state, _ = state_lib.apply_gradients(state, "g", jnp.ones(()), tx, enabled=jnp.array(on))
    sizes.append(before - float(state.params["g"]))
  return np.array(sizes)


def test_learning_rate_warmup_then_cosine_decay_follows_the_formula():
  lr, warmup, decay, end = 0.5, 4, 12, 0.1
  cfg = state_lib.optimizer_config(lr=lr, name="sgd", b1=0.0, warmup_steps=warmup, decay_steps=decay,
                                   end_lr_ratio=end)
  t = np.arange(16)
  cosine = lr * end + (lr - lr * end) * 0.5 * (1 + np.cos(np.pi * np.clip(t - warmup, 0, None) / (decay - warmup)))
  expected = np.where(t < warmup, lr * t / warmup, np.where(t < decay, cosine, lr * end))
  np.testing.assert_allclose(_sgd_step_sizes(cfg, 16), expected, rtol=1e-5, atol=1e-7)


def test_learning_rate_schedule_counts_only_applied_updates():
  cfg = state_lib.optimizer_config(lr=1.0, name="sgd", b1=0.0, decay_steps=4)
  sizes = _sgd_step_sizes(cfg, 6, enabled=[True, False, True, False, True, True])
  expected_applied = 0.5 * (1 + np.cos(np.pi * np.arange(4) / 4))
  np.testing.assert_allclose(sizes[[0, 2, 4, 5]], expected_applied, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(sizes[[1, 3]], 0.0)


def test_ema_update_formula():
  ema = {"w": jnp.array([1.0, 2.0])}
  out = state_lib.ema_update(ema, {"w": jnp.array([3.0, 0.0])}, 0.9)
  np.testing.assert_allclose(out["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2], rtol=1e-6)


def test_edm_ema_decay_matches_edm():
  # EDM: ema_nimg = min(halflife, rampup * cur_nimg); beta = 0.5 ** (batch / ema_nimg).
  np.testing.assert_allclose(state_lib.edm_ema_decay(10_000_000, 512, 500_000, 0.05), 0.5 ** (512 / 500_000),
                             rtol=1e-6)
  np.testing.assert_allclose(state_lib.edm_ema_decay(1_000_000, 512, 500_000, 0.05), 0.5 ** (512 / 50_000),
                             rtol=1e-6)
  np.testing.assert_allclose(state_lib.edm_ema_decay(1_000_000, 512, 500_000, None), 0.5 ** (512 / 500_000),
                             rtol=1e-6)


def test_step_rng_is_deterministic_and_distinct():
  s = _state()
  a1, b1 = s.step_rng("a", "b")
  a2, = s.step_rng("a")
  assert jnp.array_equal(jax.random.key_data(a1), jax.random.key_data(a2))
  assert not jnp.array_equal(jax.random.key_data(a1), jax.random.key_data(b1))
  a3, = s.replace(step=s.step + 1).step_rng("a")
  assert not jnp.array_equal(jax.random.key_data(a1), jax.random.key_data(a3))


def test_optimizer_section_saved_before_new_keys_gets_their_defaults():
  old = state_lib.optimizer_config(lr=0.5, name="sgd", b1=0.0)
  del old["decay_steps"], old["end_lr_ratio"]   # a config.json written before the schedule keys existed
  np.testing.assert_allclose(_sgd_step_sizes(old, 3), [0.5, 0.5, 0.5], rtol=1e-6)
