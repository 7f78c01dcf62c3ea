"""Load a preset config by path, from any working directory:

    from gendistill import presets, train
    config = presets.load("configs/sid.py:toy2d,smoke")      # the same string as --config of the launcher
    train.train_and_evaluate(config, "/tmp/toy_sid")

The path is tried as given (absolute, or relative to the working directory), then relative to the source
checkout gendistill was installed from (`pip install -e .`), so the repository's presets load from anywhere.
The preset modules import their siblings as `configs.base`; the directory above the preset's folder is put on
sys.path for that import. The part after ':' is passed to the preset's `get_config(arg)`.
"""
import importlib.util
import os
import sys

import ml_collections

# The source checkout that holds gendistill/ (and configs/) when installed in editable mode or run from a clone.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve(path: str) -> str:
  """The preset file `path` names: as given, else relative to the gendistill checkout."""
  candidates = [os.path.expanduser(path)]
  if not os.path.isabs(path):
    candidates.append(os.path.join(CHECKOUT, path))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise FileNotFoundError(f"No preset file {path!r} (looked in {', '.join(map(repr, candidates))}). Pass the path "
                          "of a file in the repository's configs/, e.g. /path/to/gendistill/configs/sid.py.")


def load(spec: str) -> ml_collections.ConfigDict:
  """'PATH[:ARG]' -> the preset's get_config(ARG) (get_config() without ARG)."""
  path, sep, arg = spec.partition(":")
  path = resolve(path)
  folder = os.path.dirname(path)
  root = os.path.dirname(folder)
  # `from configs import base` inside a preset must find the preset's own sibling modules.
  loaded = sys.modules.get(os.path.basename(folder))
  if loaded is not None and getattr(loaded, "__path__", None):
    if os.path.abspath(list(loaded.__path__)[0]) != folder:
      raise ImportError(f"A different {os.path.basename(folder)!r} package ({list(loaded.__path__)[0]}) is already "
                        f"imported; cannot load presets of {folder} in the same process.")
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    name = f"_gendistill_preset_{os.path.splitext(os.path.basename(path))[0]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  finally:
    if added:
      sys.path.remove(root)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"{path} has no get_config(): not a preset file.")
  return module.get_config(arg) if sep else module.get_config()
