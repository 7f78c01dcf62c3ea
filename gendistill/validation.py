"""One check of a run's config before anything is compiled or written: every problem named by its key.

    validation.check_config(config)            # raises ConfigError listing every bad key, value and fix
    validation.check_teacher(config, spec)     # a workdir teacher made for the run's data, readable
    validation.check_resume(config, saved)     # a resumed run's config differs only where it may
    validation.check_eval_args(...)            # gendistill.evaluate's arguments

The checks are generic over config sections (they never branch on the objective): every `optimizer`-like
section (a dict with `lr`) anywhere under `objective` is checked the same way, every float anywhere must not be
NaN, and the `train`, `eval`, `data`, `sampler` sections have fixed rules.
"""
import contextlib
import json
import math
from typing import Any, Dict, List, Optional

import ml_collections

from gendistill import paths

# Config sections that may change when a run is resumed; any other difference is an error. (A checkpoint
# restores under any mesh, so a run may move to another number or arrangement of devices.)
RESUMABLE_SECTIONS = ("train", "eval", "sampler", "mesh")


class ConfigError(ValueError):
  """A bad config value (or a bad file a config names); the message names every key at fault."""


def _flatten(tree, prefix: str = "") -> Dict[str, Any]:
  out = {}
  items = tree.items() if hasattr(tree, "items") else ()
  for k, v in items:
    key = f"{prefix}{k}"
    if hasattr(v, "items"):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Problems:
  def __init__(self):
    self.items: List[str] = []

  def add(self, key: str, value, expected: str):
    self.items.append(f"{key} = {value!r}: expected {expected}")

  def int_at_least(self, cfg, section: str, key: str, low: int, why: str = ""):
    if section not in cfg or key not in cfg[section]:
      return
    v = cfg[section][key]
    if not _is_int(v) or v < low:
      self.add(f"{section}.{key}", v, f"an integer >= {low}{why}")

  def raise_if_any(self, what: str):
    if self.items:
      raise ConfigError(f"Invalid {what} ({len(self.items)} problem{'s' * (len(self.items) > 1)}):\n  "
                        + "\n  ".join(self.items))


def _check_optimizer(p: _Problems, key: str, section):
  lr = section.get("lr")
  if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
    p.add(f"{key}.lr", lr, "a finite learning rate > 0")
  for k in ("warmup_steps", "decay_steps"):
    if k in section and (not _is_int(section[k]) or section[k] < 0):
      p.add(f"{key}.{k}", section[k], "an integer >= 0")
  for k in ("b1", "b2"):
    if k in section and (not _is_number(section[k]) or not 0 <= section[k] < 1):
      p.add(f"{key}.{k}", section[k], "a number in [0, 1)")
  for k in ("eps", "weight_decay", "grad_clip_norm", "grad_clip_value", "end_lr_ratio"):
    if k in section and (not _is_number(section[k]) or not math.isfinite(section[k]) or section[k] < 0):
      p.add(f"{key}.{k}", section[k], "a finite number >= 0")


def _optimizer_sections(tree, prefix: str):
  """(dotted key, section) of every dict with an `lr` under `tree`."""
  for k, v in tree.items():
    if hasattr(v, "items"):
      if "lr" in v:
        yield f"{prefix}{k}", v
      else:
        yield from _optimizer_sections(v, f"{prefix}{k}.")


def check_config(config: ml_collections.ConfigDict, process_count: int = 1) -> None:
  """Raises ConfigError naming every bad key of a run's config; run before anything is built or written."""
  p = _Problems()
  for key, v in _flatten(config).items():
    if isinstance(v, float) and math.isnan(v) and not key.endswith(".lr"):   # lr: its own message below
      p.add(key, v, "a number (NaN is never a valid setting)")
  tc = config.get("train", {})
  p.int_at_least(config, "train", "num_steps", 0)
  for key in ("log_every", "checkpoint_every", "num_grid_samples", "max_nonfinite_logs", "microbatches"):
    p.int_at_least(config, "train", key, 1)
  p.int_at_least(config, "train", "keep_checkpoints", 1, " (0 would delete every checkpoint of the run)")
  for key in ("sample_every", "eval_every"):
    p.int_at_least(config, "train", key, 0, " (0 disables)")
  if "max_skipped_fraction" in tc:
    v = tc.max_skipped_fraction
    if not _is_number(v) or not 0 <= v <= 1:
      p.add("train.max_skipped_fraction", v, "a fraction in [0, 1] (1 never stops)")
  if "max_param_norm" in tc:
    v = tc.max_param_norm
    if not _is_number(v) or not (v > 0 or v == 0):
      p.add("train.max_param_norm", v, "a number > 0 (0 disables the check)")

  ec = config.get("eval", {})
  for key in ("num_samples", "batch_size", "inception_batch_size"):
    p.int_at_least(config, "eval", key, 1)
  for key in ("steps", "ref_images"):
    p.int_at_least(config, "eval", key, 0)
  if ec.get("inception_weights"):
    if not paths.isfile(ec.inception_weights):
      p.add("eval.inception_weights", ec.inception_weights, "an existing Inception weights file")
    if not ec.get("ref_stats") and not ec.get("ref_images"):
      p.add("eval.ref_stats", ec.get("ref_stats"), "an .npz of reference mu/sigma (or set eval.ref_images > 0) "
            "when eval.inception_weights is set")
  if ec.get("ref_stats"):
    problem = ref_stats_problem(ec.ref_stats)
    if problem:
      p.add("eval.ref_stats", ec.ref_stats, problem)

  dc = config.get("data", {})
  p.int_at_least(config, "data", "batch_size", 1)
  if _is_int(dc.get("batch_size")) and dc.batch_size >= 1 and dc.batch_size % max(process_count, 1):
    p.add("data.batch_size", dc.batch_size, f"a multiple of the number of processes ({process_count})")
  from gendistill import data as data_lib  # pylint: disable=g-import-not-at-top
  if "name" in dc and dc.name not in data_lib.NAMES:
    p.add("data.name", dc.name, f"one of {data_lib.NAMES}")
  from gendistill.data import toy2d  # pylint: disable=g-import-not-at-top
  if dc.get("name") == "toy2d":
    kind = dc.get("toy2d_kind")
    if not toy2d.is_known_kind(kind):
      p.add("data.toy2d_kind", kind, f"one of {toy2d.ALL_KINDS_TEXT} (SEED a non-negative integer)")
    else:   # a user's mixture or points file is read and checked now, before anything is built
      try:
        data_lib.check_toy2d(dc)
      except ValueError as e:
        p.add("data.toy2d_kind", kind, f"valid toy2d data: {e}")

  sc = config.get("sampler", {})
  p.int_at_least(config, "sampler", "num_steps", 1)
  if "sigma_min" in sc and "sigma_max" in sc:
    if not (_is_number(sc.sigma_min) and sc.sigma_min > 0):
      p.add("sampler.sigma_min", sc.sigma_min, "a number > 0")
    elif not (_is_number(sc.sigma_max) and sc.sigma_max > sc.sigma_min):
      p.add("sampler.sigma_max", sc.sigma_max, f"a number > sampler.sigma_min ({sc.sigma_min})")

  tcfg = config.get("teacher", {})
  if tcfg.get("source") in ("analytic", "random", "none") and tcfg.get("workdir"):
    p.add("teacher.workdir", tcfg.workdir,
          f"'' with teacher.source = {tcfg.source!r} (that source ignores a workdir; set teacher.source='workdir' "
          "to use it)")
  if tcfg.get("source") == "analytic" and dc.get("name") == "toy2d" and dc.get("toy2d_kind") == "points":
    p.add("teacher.source", "analytic", "a teacher network for toy2d_kind='points' (points have no analytic "
          "mixture): train configs/edm.py:toy2d on the same data and set teacher.source='workdir', teacher.workdir")
  if tcfg.get("init_workdir"):
    if not paths.isfile(paths.join(tcfg.init_workdir, "config.json")):
      p.add("teacher.init_workdir", tcfg.init_workdir, "a workdir of a gendistill run (e.g. an edm run on the same "
            "data) whose network the students start from; it has no config.json")
    section = config.get("objective", {}).get(config.get("objective", {}).get("name"), {})
    if "init" not in section:
      p.add("teacher.init_workdir", tcfg.init_workdir, f"'' for objective {config.objective.name!r}: its networks "
            "start from no other network (it has no `init` setting)")
    elif section.init == "random":
      p.add(f"objective.{config.objective.name}.init", "random", "'teacher' (or 'auto') when teacher.init_workdir "
            "is set, or clear teacher.init_workdir")
  if tcfg.get("source") == "workdir":
    if not tcfg.get("workdir"):
      p.add("teacher.workdir", tcfg.get("workdir"), "the workdir of a trained run when teacher.source = 'workdir'")
    elif not paths.isfile(paths.join(tcfg.workdir, "config.json")):
      p.add("teacher.workdir", tcfg.workdir, "a workdir of a gendistill run (it has no config.json)")

  objective = config.get("objective", {})
  name = objective.get("name")
  if name is not None:
    from gendistill import objectives  # pylint: disable=g-import-not-at-top
    if name not in objectives.names():
      p.add("objective.name", name, f"one of {objectives.names()}")
    elif name in objective:   # only the chosen objective's section is checked (others may be absent)
      for key, section in _optimizer_sections(objective[name], f"objective.{name}."):
        _check_optimizer(p, key, section)
  p.raise_if_any("config")


def ref_stats_problem(path: str) -> Optional[str]:
  """What is wrong with a reference-statistics .npz for Inception metrics, or None."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gendistill.evaluation.inception import FEATURE_DIM  # pylint: disable=g-import-not-at-top
  if not paths.isfile(path):
    return "an existing .npz file with mu and sigma"
  try:
    with paths.open_file(path, "rb") as f, np.load(f, allow_pickle=False) as data:
      if not {"mu", "sigma"} <= set(data.files):
        return f"an .npz with keys mu and sigma (it has {sorted(data.files)})"
      mu, sigma = data["mu"].shape, data["sigma"].shape
  except Exception as e:  # pylint: disable=broad-except
    return f"a readable .npz file ({type(e).__name__}: {e})"
  if mu != (FEATURE_DIM,) or sigma != (FEATURE_DIM, FEATURE_DIM):
    return f"mu of shape ({FEATURE_DIM},) and sigma ({FEATURE_DIM}, {FEATURE_DIM}) (Inception pool features); " \
           f"it has mu {mu}, sigma {sigma}"
  return None


@contextlib.contextmanager
def building(what: str):
  """Turns a ValueError/KeyError raised while building `what` from a checked config (data, teacher, objective,
  networks) into a ConfigError: those modules' own messages name the setting (an unknown kind, a shape)."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, KeyError) as e:
    raise ConfigError(f"Invalid config, found while building {what}: {type(e).__name__}: {e}") from e


def read_json(path: str, what: str = "run config"):
  """A JSON file, or a ConfigError naming the file (truncated, not JSON)."""
  try:
    return json.loads(paths.read_text(path))
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} (the {what}) is not valid JSON, perhaps truncated by an interrupted write: {e}. "
                      "Restore it from a backup or start a new workdir.") from None


def check_teacher(config: ml_collections.ConfigDict, spec) -> None:
  """A workdir teacher, and the run in teacher.init_workdir, must have been trained on the run's data: same data
  name, dataset, resolution, classes."""
  tcfg = config.get("teacher", {})
  runs = [("teacher.workdir", tcfg.get("workdir"))] if tcfg.get("source") == "workdir" and tcfg.get("workdir") else []
  if tcfg.get("init_workdir"):
    runs.append(("teacher.init_workdir", tcfg.init_workdir))
  p = _Problems()
  for where, workdir in runs:
    info = read_json(paths.join(workdir, "config.json"), "run config of " + where)
    t_spec, t_data = info.get("spec", {}), info.get("config", {}).get("data", {})
    if tuple(t_spec.get("shape", ())) != tuple(spec.shape):
      p.add(where, workdir, f"a run on the run's data shape {tuple(spec.shape)}; it was trained on "
            f"{tuple(t_spec.get('shape', ()))}")
    if t_spec.get("num_classes", 0) != spec.num_classes:
      p.add(where, workdir, f"a run with the run's {spec.num_classes} classes "
            f"(data.conditional = {config.data.conditional}); it has {t_spec.get('num_classes')}")
    same_kind = {"tfds": ("tfds_name",),
                 "toy2d": ("toy2d_kind", "toy2d_mixture", "path")}.get(config.data.get("name"), ())
    for key in ("name",) + same_kind:
      if key in t_data and t_data[key] != config.data.get(key):
        p.add(f"data.{key}", config.data.get(key), f"the data of {where} = {workdir}: {t_data[key]!r}")
  p.raise_if_any("teacher")


def check_resume(config: ml_collections.ConfigDict, saved_config: dict, workdir: str) -> None:
  """A workdir's earlier run must have been made by the same config, except the RESUMABLE_SECTIONS.

  Keys present in only one of the two configs are not differences: code versions add keys with defaults (and a
  run's config may hold only its own objective's section). Sections of other objectives are ignored.
  """
  new = json.loads(json.dumps(config.to_dict(), default=list))
  name = new.get("objective", {}).get("name")
  def relevant(key: str) -> bool:
    parts = key.split(".")
    if parts[0] in RESUMABLE_SECTIONS:
      return False
    return not (parts[0] == "objective" and len(parts) > 2 and parts[1] != name)
  old_flat, new_flat = _flatten(saved_config), _flatten(new)
  diffs = [f"{k}: {old_flat[k]!r} -> {new_flat[k]!r}" for k in sorted(set(old_flat) & set(new_flat))
           if relevant(k) and old_flat[k] != new_flat[k]]
  if diffs:
    raise ConfigError(f"{workdir} holds a run made with a different config; use a new workdir or the saved "
                      f"values (only the sections {RESUMABLE_SECTIONS} may change on resume). Differences "
                      "(key: saved -> now): " + "; ".join(diffs))


def check_eval_args(num_samples, batch_size, steps=None, ref_stats_path=None, inception_weights=None,
                    ref_images_from_data=0) -> None:
  """gendistill.evaluate's arguments, checked before anything is restored or sampled."""
  p = _Problems()
  if not _is_int(num_samples) or num_samples < 1:
    p.add("num_samples", num_samples, "an integer >= 1")
  if not _is_int(batch_size) or batch_size < 1:
    p.add("batch_size", batch_size, "an integer >= 1")
  if steps is not None and (not _is_int(steps) or steps < 0):
    p.add("steps", steps, "an integer >= 0 (0 or unset: the objective's default)")
  if not _is_int(ref_images_from_data) or ref_images_from_data < 0:
    p.add("ref_images_from_data", ref_images_from_data, "an integer >= 0")
  if inception_weights and not paths.isfile(inception_weights):
    p.add("inception_weights", inception_weights, "an existing Inception weights file")
  if inception_weights and not ref_stats_path and not ref_images_from_data:
    p.add("ref_stats", ref_stats_path, "a reference (--ref_stats or --ref_images_from_data) with --inception_weights")
  if ref_stats_path:
    problem = ref_stats_problem(ref_stats_path)
    if problem:
      p.add("ref_stats", ref_stats_path, problem)
  p.raise_if_any("evaluation arguments")
