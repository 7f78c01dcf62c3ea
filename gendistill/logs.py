"""Readable run logs: one line per `log_every` steps, compile messages, and library noise kept out.

    log = logs.TrainLog(start_step, num_steps, log_every)   # logs "Compiling the train step ..."
    for step in ...:
      state, metrics = train_step(...)
      log(step + 1, metrics)      # "compiled in N s" after the first step; every log_every steps one line:
                                  # "step 200/1000 (20%) | denoiser/loss 0.0312 | 4.1 steps/s | ETA 3m15s"

Lines go through absl logging, so a run whose stderr is a file logs exactly what a terminal shows (a tqdm bar,
when one is drawn, is cleared around each line). Why not clu's ReportProgress: `clu.periodic_actions` imports
`clu.metric_writers`, which imports TensorFlow (for its TensorBoard writer) at import time (clu 0.0.12), and
ReportProgress reports to a work-unit note rather than to the log.

`quiet_libraries()` drops orbax's INFO lines (about 40 per checkpoint save; its warnings and errors stay).
XLA's C++ "Very slow compile? If you want to file a bug..." alarm (an ERROR-level line that fires during any
compile that takes minutes, which on a CPU is normal) is muted only while `compiling(...)` runs. It is XLA's
SlowCompilationAlarm: a LOG(ERROR) from a C++ thread once a compilation's backend phase passes 2 minutes, plus
"The operation took ..." when it ends; no XLA flag turns it off, so `compiling` raises the C++ (absl) log level
to FATAL meanwhile (the training loop's and compile_ahead's step compiles, generate's sampler). Checked by
`scripts/check_slow_compile_alarm.py` (the alarm shows for a plain compile, not inside `compiling`).
"""
import contextlib
import logging as py_logging
import os
import sys
import threading
import time
from typing import Any, Mapping, Optional

from absl import logging

# Packages (and files) whose records below WARNING are dropped: orbax's per-checkpoint chatter, and jax's backend
# probing ("Unable to initialize backend 'tpu'" on every CPU/GPU run).
QUIET_PACKAGES = ("orbax",)
QUIET_FILES = (os.path.join("jax", "_src", "xla_bridge.py"),)
# XLA's C++ log levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL.
_CPP_FATAL_ONLY = 3


def _package_dirs():
  return tuple(f"{os.sep}{name}{os.sep}" for name in QUIET_PACKAGES) + tuple(os.sep + f for f in QUIET_FILES)


class QuietLibraries(py_logging.Filter):
  """Drops records below WARNING that come from files of QUIET_PACKAGES or QUIET_FILES."""

  def __init__(self):
    super().__init__()
    self._dirs = _package_dirs()

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    path = record.pathname or ""
    return not any(d in path for d in self._dirs)


_FILTER = QuietLibraries()


def quiet_libraries():
  """Installs the filter on absl's logger and handler (idempotent). Libraries log through absl (orbax) or
  Python loggers that propagate to absl's handler on the root logger."""
  for target in (logging.get_absl_logger(), logging.get_absl_handler()):
    if _FILTER not in target.filters:
      target.addFilter(_FILTER)


def _set_cpp_min_log_level(level: int) -> bool:
  try:
    from jax._src.lib import utils  # pylint: disable=g-import-not-at-top
    utils.absl_set_min_log_level(level)
    return True
  except (ImportError, AttributeError):   # another jaxlib: the alarm simply stays
    return False


def _default_cpp_level() -> int:
  try:
    return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"))
  except ValueError:
    return 1


_mute_lock = threading.Lock()
_mute_depth = 0


def _mute_cpp(on: bool):
  """Nested (and threads'): the C++ level goes back when the last compile that muted it is done."""
  global _mute_depth
  with _mute_lock:
    _mute_depth += 1 if on else -1
    if on and _mute_depth == 1:
      _set_cpp_min_log_level(_CPP_FATAL_ONLY)
    elif not on and _mute_depth == 0:
      _set_cpp_min_log_level(_default_cpp_level())


@contextlib.contextmanager
def compiling(what: str, enabled: bool = True):
  """Logs 'Compiling <what> ...' and 'Compiled <what> in N s', and mutes XLA's slow-compile alarm meanwhile."""
  if not enabled:
    yield
    return
  logging.info("Compiling %s (the first call; minutes for a UNet on a CPU) ...", what)
  _mute_cpp(True)
  t0 = time.monotonic()
  try:
    yield
  finally:
    _mute_cpp(False)
  logging.info("Compiled %s in %.1f s", what, time.monotonic() - t0)


def format_seconds(seconds: float) -> str:
  """3725 -> '1h02m05s'; 75 -> '1m15s'; 9.5 -> '9.5s'."""
  if seconds != seconds or seconds == float("inf"):
    return "?"
  if seconds < 60:
    return f"{seconds:.1f}s"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def progress_line(step: int, total: int, metrics: Mapping[str, float], steps_per_second: Optional[float]) -> str:
  """'step 200/1000 (20%) | generator/loss 0.03124 | 4.1 steps/s | ETA 3m15s' (losses only: keys ending in
  'loss')."""
  parts = [f"step {step}/{total} ({100.0 * step / max(total, 1):.0f}%)"]
  losses = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()) if k.endswith("loss"))
  if losses:
    parts.append(losses)
  if steps_per_second:
    parts.append(f"{steps_per_second:.3g} steps/s")
    parts.append(f"ETA {format_seconds((total - step) / steps_per_second)}")
  return " | ".join(parts)


def _write_line(message: str):
  """absl INFO; a tqdm bar on the terminal is cleared and redrawn around it."""
  tqdm = sys.modules.get("tqdm")
  if tqdm is not None and sys.stderr.isatty():
    with tqdm.tqdm.external_write_mode(file=sys.stderr):
      logging.info("%s", message)
  else:
    logging.info("%s", message)


class TrainLog:
  """The training loop's log (process 0 only: `enabled`). Made just before the first step; called after every
  step with that step's number (1-based) and metrics (device arrays are fetched only on logging steps)."""

  def __init__(self, start: int, total: int, log_every: int, enabled: bool = True, what: str = "the train step"):
    self.total, self.every, self.enabled = int(total), max(int(log_every), 1), enabled
    quiet_libraries()
    self._compile = compiling(what, enabled)
    self._compile.__enter__()   # pylint: disable=unnecessary-dunder-call
    self._compiled = False
    self._last = (int(start), time.monotonic())

  def __call__(self, step: int, metrics: Mapping[str, Any]):
    if not self._compiled:
      # The first call returns once the step is compiled and dispatched (it runs asynchronously).
      self._compile.__exit__(None, None, None)
      self._compiled = True
      self._last = (step - 1, time.monotonic())
    if not self.enabled or (step % self.every and step != self.total):
      return
    import jax  # pylint: disable=g-import-not-at-top
    metrics = jax.device_get(dict(metrics))
    now = time.monotonic()
    last_step, last_time = self._last
    rate = (step - last_step) / (now - last_time) if step > last_step and now > last_time else None
    self._last = (step, now)
    _write_line(progress_line(step, self.total, metrics, rate))

  def close(self):
    if not self._compiled:
      self._compile.__exit__(None, None, None)
      self._compiled = True
