"""Checks that XLA's "Very slow compile? If you want to file a bug..." alarm stays off the terminal inside
`gendistill.logs.compiling` (which the training loop wraps around compiling its step) and shows outside it.

    python scripts/check_slow_compile_alarm.py      # ~8 min of wall-clock time (more on a loaded machine), ~15 s of CPU

The alarm is XLA's SlowCompilationAlarm (xla/service/slow_operation_alarm.cc): a LOG(ERROR) from a C++ thread
when the backend phase of one compilation runs longer than 2 minutes (hard-coded; no XLA flag turns it off), and
another ("The operation took ...") when that compilation ends. Its only switch is the C++ (absl) log level,
which `logs.compiling` raises to FATAL while it runs (jax._src.lib.utils.absl_set_min_log_level). To pass the
2 minutes without minutes of CPU, the script compiles a ~7 s program in two child processes (one plain, one
inside `logs.compiling`) and keeps both stopped (SIGSTOP) except for 0.5 s in every 30.5 s.
"""
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = ("Very slow compile", "The operation took")


def child(mode: str):
  sys.path.insert(0, ROOT)
  import gendistill  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gendistill import logs  # pylint: disable=g-import-not-at-top

  def f(x):
    for i in range(3000):   # a long unrolled chain: seconds of LLVM code generation
      x = jnp.sin(x * (1.0 + i * 1e-3)) + jnp.cos(x[::-1])
    return x

  lowered = jax.jit(f).lower(jnp.ones((64,)))
  print("COMPILE_START", flush=True)
  if mode == "muted":
    with logs.compiling("a slow program"):
      lowered.compile()
  else:
    lowered.compile()


def main():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = {}
  for mode in ("plain", "muted"):
    p = subprocess.Popen([sys.executable, __file__, "--child", mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    assert "COMPILE_START" in p.stdout.readline()
    procs[mode] = p
  while any(p.poll() is None for p in procs.values()):
    for p in procs.values():
      if p.poll() is None:
        p.send_signal(signal.SIGCONT)
    time.sleep(0.5)
    for p in procs.values():
      if p.poll() is None:
        p.send_signal(signal.SIGSTOP)
    time.sleep(30)
  ok = True
  for mode, p in procs.items():
    _, err = p.communicate()
    shown = [m for m in MESSAGES if m in err]
    print(f"{mode:6s} exit {p.returncode}: alarm messages on stderr: {shown or 'none'}")
    ok &= p.returncode == 0 and (bool(shown) if mode == "plain" else not shown)
  print("OK: the alarm fires when compiling plainly and is muted inside logs.compiling" if ok else "FAILED")
  return 0 if ok else 1


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--child":
    child(sys.argv[2])
  else:
    sys.exit(main())
