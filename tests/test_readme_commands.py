"""The README's "Distil your own teacher" commands, run as written at smoke size (`,smoke` presets, workdirs and
outputs under a temporary directory)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands(section: str):
  """The commands of the bash blocks of README section `section` (continuation lines joined, comments dropped)."""
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", body, re.S):
    joined = block.replace("\\\n", " ")
    commands += [line.split()[:] for line in joined.splitlines() if line.strip() and not line.startswith("#")]
  return commands


def at_smoke_size(argv, tmp):
  out = []
  for arg in argv:
    arg = arg.replace(".venv/bin/python", sys.executable)
    arg = arg.replace("$PWD/workdirs/", f"{tmp}/").replace("workdirs/", f"{tmp}/")
    if arg.startswith("--config=") and ".py:" in arg:
      arg += ",smoke"
    if arg.startswith("--out="):
      arg = f"--out={tmp}/{arg[len('--out='):]}"
    out.append(arg)
  return out


@pytest.mark.slow
def test_distil_your_own_teacher_commands_run(tmp_path, user_env):
  commands = readme_commands("Distil your own teacher")
  assert len(commands) == 6 and all(c[0] == ".venv/bin/python" for c in commands), commands
  for command in commands:
    argv = at_smoke_size(command, tmp_path)
    result = subprocess.run(argv, cwd=ROOT, env=user_env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (" ".join(argv), result.stderr[-3000:])
  for name in ("toy_sid.png", "digits_sid.png"):
    assert (tmp_path / name).stat().st_size > 0
  with open(tmp_path / "toy_sid" / "config.json") as f:
    text = f.read()
  assert '"toy2d_kind": "ring8"' in text and '"source": "workdir"' in text
