"""Objective registry: config name -> builder. The launcher looks objectives up here and never branches on them."""
from typing import Callable, Dict, Tuple

import ml_collections

from gendistill.objectives.base import Objective

_REGISTRY: Dict[str, Tuple[Callable, Callable]] = {}


def register(name: str, default_config: Callable[[], ml_collections.ConfigDict]):
  """Decorator for `build(config, spec) -> Objective`; `default_config()` declares the method's own keys."""
  def wrap(build_fn):
    if name in _REGISTRY:
      raise ValueError(f"Objective {name!r} is registered twice.")
    _REGISTRY[name] = (build_fn, default_config)
    return build_fn
  return wrap


def names():
  return sorted(_REGISTRY)


def default_configs() -> Dict[str, ml_collections.ConfigDict]:
  return {name: default() for name, (_, default) in sorted(_REGISTRY.items())}


def build(config: ml_collections.ConfigDict, spec) -> Objective:
  name = config.objective.name
  if name not in _REGISTRY:
    raise ValueError(f"Unknown objective {name!r}; registered: {names()}.")
  return _REGISTRY[name][0](config, spec)


# Registration happens on import of each method's module.
from gendistill.objectives import edm  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import sid  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import diff_instruct  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import dmd  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import fdistill  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import ign  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import adversarial  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import add  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import consistency  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import progressive  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import sim  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import scm  # pylint: disable=g-import-not-at-top,wrong-import-position
from gendistill.objectives import meanflow  # pylint: disable=g-import-not-at-top,wrong-import-position

__all__ = ["Objective", "register", "build", "names", "default_configs"]
