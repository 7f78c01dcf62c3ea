"""A run's log written to a file: one progress line per log_every steps (loss, steps/s, ETA), compile messages,
and no orbax INFO lines around checkpoints."""
import os
import re
import subprocess
import sys

from gendistill import logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_progress_line_and_seconds():
  line = logs.progress_line(200, 1000, {"denoiser/loss": 0.03125, "denoiser/grad_norm": 2.0}, 4.0)
  assert line == "step 200/1000 (20%) | denoiser/loss 0.03125 | 4 steps/s | ETA 3m20s"
  assert logs.format_seconds(3725) == "1h02m05s" and logs.format_seconds(9.5) == "9.5s"
  assert "ETA" not in logs.progress_line(1, 10, {}, None)


def test_log_file_of_a_run(tmp_path):
  log_path = tmp_path / "run.log"
  args = ["--config=configs/edm.py:toy2d,smoke", f"--workdir={tmp_path / 'run'}", "--config.train.num_steps=40",
          "--config.train.log_every=10", "--config.train.checkpoint_every=10"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  with open(log_path, "w") as f:
    result = subprocess.run([sys.executable, "-m", "gendistill.main", *args], cwd=ROOT, env=env, stdout=f,
                            stderr=subprocess.STDOUT, timeout=600)
  text = log_path.read_text()
  assert result.returncode == 0, text[-3000:]
  lines = text.splitlines()
  progress = [l for l in lines if re.search(r"step \d+/40 \(\d+%\)", l)]
  assert [re.search(r"step (\d+)/40", l).group(1) for l in progress] == ["10", "20", "30", "40"], text
  for l in progress:
    assert "denoiser/loss" in l and "steps/s" in l and "ETA" in l, l
  assert any("Compiling the train step" in l for l in lines)
  assert any(re.search(r"Compiled the train step in [\d.]+ s", l) for l in lines)
  assert not [l for l in lines if "orbax" in l or "checkpoint_manager.py" in l or "atomicity.py" in l]
  # 4 checkpoints, a final evaluation and grid: the whole log stays short.
  assert len(lines) < 25, text


def test_slow_compile_alarm_switch_exists():
  """`compiling` mutes XLA's slow-compile alarm through jaxlib's absl log level (scripts/check_slow_compile_alarm.py
  shows the effect; it takes minutes): a jaxlib without that switch must fail here, not print the alarm again."""
  assert logs._set_cpp_min_log_level(logs._default_cpp_level())  # pylint: disable=protected-access
  with logs.compiling("nothing"):
    assert logs._mute_depth == 1  # pylint: disable=protected-access
  assert logs._mute_depth == 0  # pylint: disable=protected-access
