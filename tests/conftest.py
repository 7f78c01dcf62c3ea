"""8 fake CPU devices for sharding tests; must run before jax is imported anywhere."""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling a UNet train step on CPU takes tens of seconds; tests (and the launcher subprocesses they start) that
# build the same program reuse it through JAX's persistent compilation cache. It never changes results.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".pytest_cache", "jax_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
sys.path.insert(0, _ROOT)  # configs/ is importable

import gendistill  # noqa: E402,F401  (adds the package's CPU flags)


def pytest_collection_modifyitems(items):
  """The long end-to-end tests first, so that under `pytest -n 2` the short ones fill the end of the run and
  neither worker finishes minutes before the other (stable sort: the order is otherwise unchanged)."""
  long_first = ("test_notebooks.py", "test_readme_commands.py", "test_multiprocess.py")
  items.sort(key=lambda item: not (item.get_closest_marker("slow") or item.fspath.basename in long_first))
