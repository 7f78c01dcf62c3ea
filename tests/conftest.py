"""8 fake CPU devices for sharding tests; must run before jax is imported anywhere."""
import os
import sys

import pytest

FAKE_DEVICES = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAKE_DEVICES).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling a UNet train step on CPU takes tens of seconds; tests (and the launcher subprocesses they start) that
# build the same program reuse it through JAX's persistent compilation cache. It never changes results.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".pytest_cache", "jax_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
sys.path.insert(0, _ROOT)  # configs/ is importable

import gendistill  # noqa: E402,F401  (adds the package's CPU flags)
import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

# The 8 fake devices share one host's memory, so orbax's replica-parallel saving (each replicated array cut into one
# slice per device, a compiled slice program per shape) gains nothing here and took ~30% of an in-process smoke
# run. Saving each array whole writes the same checkpoint.
ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                        override=True)


@pytest.fixture
def user_env():
  """The environment for a process that runs as a user's would on this machine: its one CPU device, not the suite's
  8 fake ones. For the end-to-end runs (README commands, notebooks): compiling them for 8 devices costs ~40% more
  time, and sharding has tests of its own."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = env.get("XLA_FLAGS", "").replace(FAKE_DEVICES, "").strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  return env


def pytest_collection_modifyitems(items):
  """The long end-to-end tests first, so that under `pytest -n 2` the short ones fill the end of the run and
  neither worker finishes minutes before the other (stable sort: the order is otherwise unchanged)."""
  long_first = ("test_notebooks.py", "test_readme_commands.py", "test_multiprocess.py")
  items.sort(key=lambda item: not (item.get_closest_marker("slow") or item.fspath.basename in long_first))
