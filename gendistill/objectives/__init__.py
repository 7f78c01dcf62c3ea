"""Objective registry: config name -> factory. The launcher looks objectives up here and never branches on them.

`build(config, spec)` is the one place that turns a run's config into a factory's arguments (see base.py for
the contract): the objective's own section, its role networks (from `config.network` through
`gendistill.nets.build_networks`, unless given), the data spec and the run's static facts.
"""
import dataclasses
from typing import Callable, Dict, Mapping, Optional, Union

import ml_collections

from gendistill import nets
from gendistill.objectives.base import Objective, RunFacts


@dataclasses.dataclass(frozen=True)
class Entry:
  factory: Callable            # factory(cfg, networks, spec, run) -> Objective
  default_config: Callable     # () -> ConfigDict: the method's own keys with their defaults
  roles: Callable              # cfg -> {role: network kind} (gendistill.nets.KINDS)
  network_spec: Callable       # (cfg, spec, network_cfg) -> the data spec its networks are built for


_REGISTRY: Dict[str, Entry] = {}


def register(name: str, default_config: Callable[[], ml_collections.ConfigDict],
             roles: Union[Mapping[str, str], Callable[[ml_collections.ConfigDict], Mapping[str, str]]],
             network_spec: Optional[Callable] = None):
  """Decorator for a factory `(cfg, networks, spec, run) -> Objective`; `default_config()` declares the method's
  own keys, `roles` the networks it receives ({role: kind}, or a function of its config section).

  `network_spec(cfg, spec, network_cfg) -> spec`, optional: the data spec `networks_for` builds the networks for
  when it is not the data's (MeanFlow widens the label input by its (t - r) features), raising when the
  `network` section cannot serve the method. Only the registry calls it; the factory still never sees
  network_cfg."""
  roles_fn = roles if callable(roles) else (lambda cfg, roles=dict(roles): roles)
  spec_fn = network_spec or (lambda cfg, spec, network_cfg: spec)

  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f"Objective {name!r} is registered twice.")
    _REGISTRY[name] = Entry(factory, default_config, roles_fn, spec_fn)
    return factory
  return wrap


def names():
  return sorted(_REGISTRY)


def entry(name: str) -> Entry:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown objective {name!r}; registered: {names()}.")
  return _REGISTRY[name]


def default_config(name: str) -> ml_collections.ConfigDict:
  """The config section of objective `name` with its defaults."""
  return entry(name).default_config()


def section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The chosen objective's config section, with a clear error when the config does not hold it."""
  name = config.objective.name
  entry(name)
  if name not in config.objective:
    raise ValueError(f"config.objective.name is {name!r} but the config has no objective.{name} section: build "
                     f"the config for that objective (configs/base.py get_config({name!r}) or its preset), "
                     "instead of changing objective.name afterwards.")
  return config.objective[name]


def networks_for(config: ml_collections.ConfigDict, spec) -> Dict[str, nets.Network]:
  """The role networks of the chosen objective, from `config.network` (the one adapter: nets.build_networks)."""
  cfg = section(config)
  e = entry(config.objective.name)
  critic = cfg.critic if "critic" in cfg else None
  features = cfg.weighting_features if "weighting_features" in cfg else 128
  return nets.build_networks(config.network, e.network_spec(cfg, spec, config.network), e.roles(cfg),
                             critic_cfg=critic, weighting_features=features)


def make(name: str, networks: Mapping[str, nets.Network], spec, run: RunFacts,
         cfg: Optional[ml_collections.ConfigDict] = None) -> Objective:
  """Objective `name` from explicit parts: custom loops, notebooks and tests (cfg: its section; default the
  registered defaults)."""
  e = entry(name)
  cfg = e.default_config() if cfg is None else cfg
  missing = sorted(set(e.roles(cfg)) - set(networks))
  if missing:
    raise ValueError(f"Objective {name!r} needs networks for the roles {missing}; got {sorted(networks)}.")
  return e.factory(cfg, dict(networks), spec, run)


def build(config: ml_collections.ConfigDict, spec, networks: Optional[Mapping[str, nets.Network]] = None
          ) -> Objective:
  """The objective of a run's config; `networks` replaces the ones built from config.network."""
  name = config.objective.name
  networks = networks_for(config, spec) if networks is None else networks
  return make(name, networks, spec, RunFacts.from_config(config), section(config))


# Shared-section keys added after runs were saved, with the value those runs ran with.
ADDED_KEYS = {("train", "microbatches"): 1, ("network", "dtype"): "float32", ("network", "remat"): "none",
              **{("network", key): value for key, value in nets.unet.EDM_FIELDS.items()},
              **{("network", key): value for key, value in nets.edm2.CONFIG_FIELDS.items()},
              ("data", "toy2d_mixture"): "", ("teacher", "init_workdir"): ""}


def migrate_config(saved: dict) -> dict:
  """A config.json's dict in today's layout, migrated once where it is read: runs saved before configs held
  only the chosen objective carry every registered objective's section (the chosen one is kept), and runs
  saved before a key of ADDED_KEYS existed get the value they ran with."""
  saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
  name = saved["objective"]["name"]
  saved["objective"] = {"name": name, name: saved["objective"][name]}
  for (sec, key), value in ADDED_KEYS.items():
    if sec in saved:
      saved[sec].setdefault(key, value)
  return saved


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

__all__ = ["Objective", "RunFacts", "register", "build", "make", "names", "default_config", "networks_for",
           "migrate_config", "section"]
