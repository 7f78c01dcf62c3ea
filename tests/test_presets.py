"""Presets load by path from any working directory (gendistill.presets)."""
import os
import subprocess
import sys

import pytest

from gendistill import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_presets_load_from_another_directory(tmp_path):
  code = ("import sys; from gendistill import presets; "
          f"a = presets.load({os.path.join(ROOT, 'configs', 'sid.py')!r} + ':toy2d,smoke'); "
          "b = presets.load('configs/edm.py:digits'); "
          "assert 'configs' not in [p.split('/')[-1] for p in sys.path]; "
          "print(a.objective.name, a.data.name, b.objective.name, b.data.name)")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["sid", "toy2d", "edm", "digits"]


def test_presets_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No preset file"):
    presets.load("configs/nothing.py:toy2d")
  (tmp_path / "x.py").write_text("A = 1\n")
  with pytest.raises(AttributeError, match="get_config"):
    presets.load(str(tmp_path / "x.py"))
  assert presets.load("configs/edm.py:toy2d,smoke").train.num_steps == 2
