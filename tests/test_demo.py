"""`make demo`'s SiD stage: the preset's recipe for a full run, measured short-run settings for the demo's."""
from configs import sid as sid_config


def _rates(config):
  o = config.objective.sid
  return [(opt.lr, opt.decay_steps) for opt in (o.generator_optimizer, o.fake_score_optimizer)]


def test_the_digits_preset_is_the_measured_recipe():
  config = sid_config.get_config("digits")
  assert config.train.num_steps == 5000
  assert _rates(config) == [(1e-4, 5000)] * 2          # decayed to 0 by a cosine over the run
  assert (config.objective.sid.ema.halflife_kimg, config.objective.sid.ema.rampup_ratio) == (20.0, 0.25)


def test_a_shorter_demo_run_uses_the_short_run_settings():
  config = sid_config.get_config("digits")
  sid_config.set_digits_steps(config, 200)
  assert config.train.num_steps == 200
  assert _rates(config) == [(2e-5, 0)] * 2             # constant
  assert (config.objective.sid.ema.halflife_kimg, config.objective.sid.ema.rampup_ratio) == (10.0, 0.05)


def test_a_longer_demo_run_stretches_the_recipe_decay():
  config = sid_config.get_config("digits")
  sid_config.set_digits_steps(config, 8000)
  assert config.train.num_steps == 8000
  assert _rates(config) == [(1e-4, 8000)] * 2
  unchanged = sid_config.get_config("digits")
  sid_config.set_digits_steps(unchanged, 5000)
  assert unchanged.to_dict() == sid_config.get_config("digits").to_dict()
