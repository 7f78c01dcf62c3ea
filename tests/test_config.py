"""Every preset loads; a misspelt key or a wrong type is an error that names it."""
import glob
import importlib
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import base
from gendistill import objectives
from gendistill.data import DataSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _preset_modules():
  return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                if not os.path.basename(p).startswith(("_", "base")))


def _preset_args():
  """Every preset module lists the arguments it accepts in ARGS; each is tested with and without smoke."""
  for name in _preset_modules():
    module = importlib.import_module(f"configs.{name}")
    if not hasattr(module, "ARGS"):
      yield name, None      # fails below: every preset module must say which arguments it takes
      continue
    for arg in module.ARGS:
      yield name, arg
      yield name, arg + ",smoke"


@pytest.mark.parametrize("module,arg", list(_preset_args()))
def test_preset_loads_and_is_locked(module, arg):
  assert arg is not None, f"configs/{module}.py does not declare ARGS"
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  assert config.objective.name == module and config.objective.name in config.objective
  with pytest.raises(AttributeError, match="batch_szie"):
    config.data.batch_szie = 3
  with pytest.raises(TypeError, match="batch_size"):
    config.data.batch_size = "many"


@pytest.mark.parametrize("module,arg", [(m, a) for m, a in _preset_args() if a and "smoke" not in a])
def test_a_decayed_rate_ends_with_the_run(module, arg):
  # A schedule counts its role's own updates: a TTUR generator (one update in `generator_every` steps) whose cosine
  # spanned train.num_steps stayed near its peak rate and collapsed on digits (experiments/digits_every_objective.md).
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  o = config.objective[module]
  for role in (k for k in o.keys() if k.endswith("optimizer") and o[k].get("decay_steps", 0)):
    every = max(int(o.get("generator_every", 1)), 1) if role == "generator_optimizer" else 1
    assert o[role].decay_steps == config.train.num_steps // every, (role, o[role].decay_steps, every)


def test_unknown_dataset_argument_is_an_error():
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
    importlib.import_module("configs.edm").get_config("mnist")


@pytest.mark.parametrize("name", objectives.names())
def test_a_config_holds_only_its_objectives_section_with_the_registered_defaults(name):
  config = base.get_config(name)
  assert set(config.objective.keys()) == {"name", name}
  assert config.objective[name].to_dict() == objectives.default_config(name).to_dict()


def test_another_objectives_key_is_an_error():
  config = importlib.import_module("configs.dmd2").get_config("toy2d,smoke")
  with pytest.raises((KeyError, AttributeError), match="sid"):
    base.override(config, ["objective.sid.alpha=2"])
  with pytest.raises(AttributeError, match="sid"):
    config.objective.sid.alpha = 2.0


def test_set_values_parse_as_typed_and_a_wrong_type_names_the_key():
  config = importlib.import_module("configs.adversarial").get_config("toy2d,smoke")
  base.override(config, ["objective.adversarial.critic.noise_conditioned=True", "train.num_steps=7",
                         "objective.adversarial.generator_optimizer.lr=1e-4", "objective.adversarial.loss=hinge"])
  o = config.objective.adversarial
  assert (o.critic.noise_conditioned, config.train.num_steps, o.generator_optimizer.lr, o.loss) == (
      True, 7, 1e-4, "hinge")
  base.override(config, ["objective.adversarial.critic.noise_conditioned=false"])
  assert o.critic.noise_conditioned is False
  with pytest.raises(ValueError, match=r"train.num_steps='seven'.*int"):
    base.override(config, ["train.num_steps=seven"])
  with pytest.raises(ValueError, match=r"noise_conditioned='yes'.*true or false"):
    base.override(config, ["objective.adversarial.critic.noise_conditioned=yes"])


def test_changing_objective_name_afterwards_is_an_error_naming_the_fix():
  config = importlib.import_module("configs.sid").get_config("toy2d,smoke")
  config.objective.name = "dmd2"
  with pytest.raises(ValueError, match=r"no objective.dmd2 section.*get_config\('dmd2'\)"):
    objectives.build(config, DataSpec("x", (2,), 0))


def test_an_old_config_json_with_every_section_migrates_to_the_chosen_one():
  """Runs saved before configs held one objective carry all of them (and lack later keys): they still load."""
  config = importlib.import_module("configs.sid").get_config("toy2d,smoke")
  new = json.loads(json.dumps(config.to_dict(), default=list))
  old = json.loads(json.dumps(new))
  for name in objectives.names():
    old["objective"].setdefault(name, objectives.default_config(name).to_dict())
  old["objective"]["sid"]["alpha"] = 1.5
  del old["train"]["microbatches"], old["network"]["remat"]
  migrated = objectives.migrate_config(json.loads(json.dumps(old, default=list)))
  assert set(migrated["objective"]) == {"name", "sid"} and migrated["objective"]["sid"]["alpha"] == 1.5
  new["objective"]["sid"]["alpha"] = 1.5
  assert migrated == new
  rebuilt = ml_collections.ConfigDict(migrated)
  assert objectives.build(rebuilt, DataSpec("x", (2,), 0)).name == "sid"


@pytest.mark.parametrize("override,named", [("--config.data.batch_szie=3", "batch_szie"),
                                            ("--config.data.batch_size=abc", "batch_size"),
                                            ("--config.objective.edm.p_meen=0", "p_meen")])
def test_command_line_errors_name_the_key(override, named, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "gendistill.main", "--config=configs/edm.py:toy2d,smoke", override,
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert named in result.stderr + result.stdout
