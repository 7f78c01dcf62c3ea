"""Every preset loads; a misspelt key or a wrong type is an error that names it."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

from configs import base

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


def test_unknown_dataset_argument_is_an_error():
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
    importlib.import_module("configs.edm").get_config("mnist")


def test_base_declares_every_objective_section():
  from gendistill import objectives
  config = base.get_config()
  assert set(objectives.names()) <= set(config.objective.keys())


@pytest.mark.parametrize("override,named", [("--config.data.batch_szie=3", "batch_szie"),
                                            ("--config.data.batch_size=abc", "batch_size"),
                                            ("--config.objective.edm.p_meen=0", "p_meen")])
def test_command_line_errors_name_the_key(override, named, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "gendistill.main", "--config=configs/edm.py:toy2d,smoke", override,
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert named in result.stderr + result.stdout
