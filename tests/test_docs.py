"""The documentation in the repository stays true to the code."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_reference_is_generated_from_the_current_code():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_config_reference.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
