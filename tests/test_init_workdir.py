"""teacher.init_workdir (preset flag init=DIR): students start from a pre-trained network of the same data."""
import jax
import numpy as np
import pytest

from configs import ct as ct_config
from configs import edm as edm_config
from configs import ign as ign_config
from configs import sid as sid_config
from gendistill import teachers, train, validation

KIND = "family:3"


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
  """A 2-step smoke `edm` run on the mixture: the network the students start from."""
  workdir = str(tmp_path_factory.mktemp("edm"))
  config = edm_config.get_config("toy2d,smoke")
  config.data.toy2d_kind = KIND
  train.train_and_evaluate(config, workdir)
  return workdir


def _students(module, edm_dir, extra=""):
  config = module.get_config(f"toy2d,smoke,init={edm_dir}{extra}")
  config.data.toy2d_kind = KIND
  config.train.num_steps = 0    # the initial state, evaluated
  return config


@pytest.mark.parametrize("module", [sid_config, ct_config], ids=["sid (analytic teacher)", "ct (no teacher)"])
def test_students_start_as_the_edm_runs_network(module, edm_run, tmp_path):
  config = _students(module, edm_run)
  name = config.objective.name
  assert config.teacher.init_workdir == edm_run and config.objective[name].init == "teacher"
  state = train.train_and_evaluate(config, str(tmp_path))
  edm = jax.device_get(teachers.from_workdir(edm_run).params)
  for role, params in state.params.items():
    assert jax.tree.structure(params) == jax.tree.structure(edm)
    for got, want in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(edm)):
      np.testing.assert_array_equal(got, want, err_msg=f"{name} {role}")
  random_start = module.get_config("toy2d,smoke")   # without the flag: not the EDM network
  random_start.data.toy2d_kind = KIND
  random_start.train.num_steps = 0
  other = train.train_and_evaluate(random_start, str(tmp_path / "random"))
  first = next(iter(other.params.values()))
  assert not np.array_equal(jax.tree.leaves(jax.device_get(first))[0], jax.tree.leaves(edm)[0])


def test_a_network_of_another_shape_is_a_clear_error(edm_run, tmp_path):
  config = _students(sid_config, edm_run)
  config.network.mlp_hidden = 48
  with pytest.raises(validation.ConfigError, match="teacher.init_workdir does not match the student network"):
    train.train_and_evaluate(config, str(tmp_path))


def test_bad_init_workdir_settings_name_the_key(edm_run, tmp_path):
  config = _students(sid_config, str(tmp_path / "nowhere"))
  with pytest.raises(validation.ConfigError, match="teacher.init_workdir.*no config.json"):
    validation.check_config(config)
  config = ign_config.get_config("toy2d,smoke")       # IGN starts from no network
  config.teacher.init_workdir = edm_run
  with pytest.raises(validation.ConfigError, match="teacher.init_workdir.*'ign'.*no `init` setting"):
    validation.check_config(config)
  config = _students(sid_config, edm_run)
  config.objective.sid.init = "random"
  with pytest.raises(validation.ConfigError, match="objective.sid.init = 'random'"):
    validation.check_config(config)
  config = _students(sid_config, edm_run)
  config.data.toy2d_kind = "ring8"                    # the EDM run saw other data
  with pytest.raises(validation.ConfigError, match="data.toy2d_kind.*teacher.init_workdir"):
    train.train_and_evaluate(config, str(tmp_path / "other_data"))
