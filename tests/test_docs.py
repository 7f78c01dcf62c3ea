"""The documentation in the repository stays true to the code."""
import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_reference_is_generated_from_the_current_code():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_config_reference.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stdout + result.stderr


def test_readme_custom_loop_example_runs_as_written():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  block = readme.split("<!-- readme-custom-loop -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
  namespace = {}
  exec(compile(block, "README.md (custom loop)", "exec"), namespace)  # pylint: disable=exec-used
  samples, metrics = namespace["samples"], namespace["metrics"]
  assert samples.shape == (1000, 2)
  assert all(bool(jax.numpy.isfinite(v)) for v in metrics.values())
  assert int(namespace["state"].step) == 200
