"""Every objective's toy2d preset, as shipped, on a seeded family of 2-D Gaussian mixtures nobody tuned on.

For each objective (`--objectives`) and each family member (`--seeds`, data.toy2d_kind='family:SEED', see
gendistill/data/toy2d.py) the objective's `configs/<objective>.py:toy2d` preset is trained by the launcher's own
function (`train.train_and_evaluate`, what `python -m gendistill.main` runs) with only the data overridden.
`--init=edm` also trains `configs/edm.py:toy2d` on the same mixture once (cached) and starts the students from
its network (teacher.init_workdir, the preset flag `init=DIR`); objectives without an init from a network are
skipped there. Then, over `--draws` draws of `--num_samples` samples (draw d: sampling key d, a fresh reference
of the true mixture with seed REFERENCE_SEED + d):

- sliced W2 to the reference, divided by that of the exact analytic teacher's Heun NFE-35 samples of the same
  draw (mean +- std over draws); consistency/progressive-type students at 1 and 2 steps, the others at 1;
- modes found (of K; every draw), mode-weight total variation (mass error), and the fraction of samples within
  3 std (Mahalanobis) of a mode (gendistill.evaluation.toy_metrics);
- rows for the true samples (the noise floor), the analytic teacher and, with --init=edm, the EDM MLP's Heun.

The bar (issue 18): one-step score-distillation students within 1.5x of the teacher's sliced W2, all modes, >= 0.9
near a mode; consistency/progressive students (1 and 2 steps) within 2x with all modes; IGN and the GAN-style
students against the score bar. Tune presets on TUNING_SEEDS only; report HELD_OUT_SEEDS. Results accumulate in
experiments/toy_family.json (a rerun reuses finished workdirs, keyed by a hash of the run's config) and the table
is rewritten from all of them into experiments/toy_family.md.

    .venv/bin/python experiments/toy_family.py --objectives=sid,dmd --seeds=100,101 --init=random
    .venv/bin/python experiments/toy_family.py --seeds=100-102 --init=edm
    .venv/bin/python experiments/toy_family.py --table_only --extra_json=OTHER.json   # rows of another results file too
"""
import argparse
import copy
import hashlib
import importlib
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
# Runs on mixtures with the same number of components compile the same programs: reuse them across processes.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, "workdirs", "toy_family", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

import gendistill  # noqa: E402,F401  (CPU flags before jax starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from configs import sid as sid_config  # noqa: E402
from gendistill import data as data_lib  # noqa: E402
from gendistill import objectives, teachers, train  # noqa: E402
from gendistill.data import toy2d  # noqa: E402
from gendistill.diffusion import samplers  # noqa: E402
from gendistill.evaluation.toy_metrics import toy_metrics  # noqa: E402
import results_md  # noqa: E402

# The one place the family's seeds are split: presets are tuned on TUNING_SEEDS only; HELD_OUT_SEEDS are reported.
TUNING_SEEDS = tuple(range(10))
HELD_OUT_SEEDS = (100, 101, 102, 103, 104)

SCORE = ("sid", "sida", "diff_instruct", "dmd", "dmd2", "fdistill", "sim")          # one step, 1.5x
FEW_STEP = ("cd", "ct", "ict", "ect", "progressive", "sct", "scd", "meanflow")       # 1 and 2 steps, 2x
GAN = ("ign", "adversarial", "add")                                                  # reported against 1.5x
OBJECTIVES = SCORE + FEW_STEP + GAN
BAR = {"score": 1.5, "few_step": 2.0, "gan": 1.5}
NEAR_BAR = 0.9            # the score and GAN bar's fraction of samples within 3 std of a mode
REFERENCE_SEED = 50_000   # reference draw d of the true mixture: seed REFERENCE_SEED + d
TRUE_SEED = 60_000        # the noise floor's own true samples: seed TRUE_SEED + d
HEUN_STEPS = 18           # NFE 35
OUT = os.path.join(ROOT, "experiments", "toy_family")


def has_init(name):
  """Whether the objective's students can start from a network (its config has an `init`): else no edm rows."""
  return "init" in importlib.import_module(f"configs.{name}").get_config("toy2d").objective[name]


def group(name):
  return "score" if name in SCORE else "few_step" if name in FEW_STEP else "gan"


def parse_seeds(text):
  seeds = []
  for part in text.split(","):
    lo, _, hi = part.partition("-")
    seeds.extend(range(int(lo), int(hi or lo) + 1))
  return seeds


def config_hash(config):
  return hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]


def heun_samples(teacher, num, key):
  z = jax.random.normal(key, (num, toy2d.DIM))
  return np.asarray(jax.jit(lambda z: samplers.heun_sampler(teacher.denoise_fn(), z, num_steps=HEUN_STEPS))(z))


def scores(samples_per_draw, references, mixture):
  """Per-draw metrics of the samples of each draw against that draw's reference."""
  out = []
  for x, ref in zip(samples_per_draw, references):
    m = toy_metrics(x, ref, mixture, per_mode=True)
    out.append({**{k: float(m[k]) for k in ("sliced_wasserstein", "num_modes_covered", "num_modes",
                                            "high_quality_fraction", "mode_weights_tv")},
                "missed": [int(i) for i in np.flatnonzero(~m["modes_covered"])],
                "thin_width_max": _nanmax(m["thin_axis_width"])})
  return out


def _nanmax(x):
  return float(np.nanmax(x)) if np.any(np.isfinite(x)) else None


def summarise(draws, teacher_draws=None):
  sw = np.array([d["sliced_wasserstein"] for d in draws])
  s = {"sw_mean": float(sw.mean()), "sw_std": float(sw.std(ddof=1)) if len(sw) > 1 else 0.0,
       "modes_min": int(min(d["num_modes_covered"] for d in draws)), "num_modes": int(draws[0]["num_modes"]),
       "near": float(np.mean([d["high_quality_fraction"] for d in draws])),
       "tv": float(np.mean([d["mode_weights_tv"] for d in draws])), "draws": draws,
       # the widest mode across its narrowest axis (x the true width), mean over draws; None: not recorded
       "thin": (float(np.mean([d["thin_width_max"] for d in draws]))
                if all(d.get("thin_width_max") is not None for d in draws) else None),
       # components missed in some draw (the family's last component is its small far mode); None: not recorded
       "missed": (sorted({i for d in draws for i in d["missed"]}) if all("missed" in d for d in draws) else None)}
  if teacher_draws is not None:   # ratio of the mean SWs; spread: std of the per-draw ratios
    teacher_sw = np.array([d["sliced_wasserstein"] for d in teacher_draws])
    ratio = sw / teacher_sw
    s.update(ratio_mean=float(sw.mean() / teacher_sw.mean()),
             ratio_std=float(ratio.std(ddof=1)) if len(ratio) > 1 else 0.0)
  return s


def passes(name, s):
  ok = s["ratio_mean"] <= BAR[group(name)] and s["modes_min"] == s["num_modes"]
  return bool(ok and (group(name) == "few_step" or s["near"] >= NEAR_BAR))


class Mixture:
  """One family member: its mixture, reference draws, and the reference rows (true samples, analytic teacher)."""

  def __init__(self, seed, args):
    self.seed, self.kind = seed, f"family:{seed}"
    self.mix = toy2d.family(seed)
    self.keys = [jax.random.key(d) for d in range(args.draws)]
    self.references = [self.mix.sample(args.num_samples, REFERENCE_SEED + d) for d in range(args.draws)]
    teacher = teachers.gaussian_mixture(self.mix.weights, self.mix.means, self.mix.covs)
    self.teacher = summarise(self.score([heun_samples(teacher, args.num_samples, k) for k in self.keys]))
    self.true = summarise(self.score([self.mix.sample(args.num_samples, TRUE_SEED + d) for d in range(args.draws)]))
    self.teacher_draws = self.teacher["draws"]

  def score(self, samples):
    return scores(samples, self.references, self.mix)


def relative(path):
  return os.path.relpath(path, ROOT)


def edm_config(seed, args):
  """configs/edm.py:toy2d on family:SEED and its workdir (named by the config's hash)."""
  config = importlib.import_module("configs.edm").get_config("toy2d")
  config.data.toy2d_kind = f"family:{seed}"
  if args.edm_steps:
    config.train.num_steps = args.edm_steps
  return config, os.path.join(args.workdir, "edm", f"family_{seed}_{config_hash(config)}")


def run_config(name, seed, init, args):
  """The objective's toy2d preset on family:SEED, started from the EDM run of the mixture with init 'edm', with
  the --set overrides."""
  module = importlib.import_module(f"configs.{name}")
  if init != "edm":
    config = module.get_config("toy2d")
  else:
    init_dir = edm_config(seed, args)[1]
    try:
      config = module.get_config(f"toy2d,init={init_dir}")   # the preset flag: it may set init-specific rates
    except ValueError:   # a preset without a teacher takes no init= flag (adversarial): set what the flag sets
      config = module.get_config("toy2d")
      sid_config.init_from(config, init_dir)
  config.data.toy2d_kind = f"family:{seed}"                 # only the data is overridden
  base.override(config, args.set)
  return config


def edm_workdir(mixture, args):
  """configs/edm.py:toy2d trained on the mixture (cached): the network the students start from with --init=edm."""
  config, workdir = edm_config(mixture.seed, args)
  t0 = time.time()
  state = train.train_and_evaluate(config, workdir)
  edm = teachers.from_workdir(workdir)
  row = summarise(mixture.score([heun_samples(edm, args.num_samples, k) for k in mixture.keys]),
                  mixture.teacher_draws)
  del state
  return workdir, {**row, "seconds": time.time() - t0, "workdir": relative(workdir)}


def run_workdir(name, mixture, config, args):
  """The run's workdir, named by its config's hash (a rerun of the same config reuses it)."""
  return os.path.join(args.workdir, args.init, name, f"{mixture.kind.replace(':', '_')}_{config_hash(config)}")


def run_one(name, mixture, args):
  """Trains the objective's toy2d preset on the mixture with the launcher's train_and_evaluate; scores it."""
  config = run_config(name, mixture.seed, args.init, args)
  workdir = run_workdir(name, mixture, config, args)
  t0 = time.time()
  state = train.train_and_evaluate(config, workdir)
  seconds = time.time() - t0
  objective = objectives.build(config, data_lib.build(config.data).spec)
  sample = jax.jit(objective.sample, static_argnums=(2, 4))
  rows = {}
  for steps in ((1, 2) if group(name) == "few_step" else (1,)):
    samples = [np.asarray(sample(state, k, args.num_samples, None, steps)) for k in mixture.keys]
    rows[str(steps)] = summarise(mixture.score(samples), mixture.teacher_draws)
    rows[str(steps)]["pass"] = passes(name, rows[str(steps)])
  return {"objective": name, "group": group(name), "seed": mixture.seed, "init": args.init,
          "train_steps": int(config.train.num_steps), "seconds": seconds, "workdir": relative(workdir),
          "config_hash": config_hash(config), "steps": rows}


def key(r):
  return (r["objective"], r["seed"], r["init"], r.get("config_hash", "-"))


def current_rows(results, args):
  """The newest row of each (objective, seed, init) that ran the preset as it is now (its config hash); rows of
  earlier presets or with --set overrides are not in it."""
  shipped = argparse.Namespace(**{**vars(args), "set": []})
  out, hashes = {}, {}
  for r in sorted(results, key=lambda r: r.get("finished", "")):
    k = (r["objective"], r["seed"], r["init"])
    if k not in hashes:
      hashes[k] = config_hash(run_config(*k, shipped))
    if r.get("config_hash") == hashes[k]:
      out[k] = r
  return out


def load(path):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"commands": [], "mixtures": {}, "edm": {}, "results": []}


def with_extra(db, paths):
  """A copy of `db` with the results (and mixtures, EDM rows, commands) of other result files added for the
  table, e.g. another session's --out; on a clash of (objective, seed, init, config) `db`'s row wins."""
  out = copy.deepcopy(db)
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f"--extra_json {path!r} does not exist; give a results file that "
                              "experiments/toy_family.py wrote (its --out plus .json).")
    extra = load(path)
    for section in ("mixtures", "edm"):
      for seed, row in extra[section].items():
        out[section].setdefault(seed, row)
    have = {key(r) for r in out["results"]}
    out["results"] += [r for r in extra["results"] if key(r) not in have]
    out["commands"] += [c for c in extra["commands"] if c not in out["commands"]]
  return out


def missed_text(s, weights):
  """' (missed: far 0.05, 0.12)': the weights of the components missed in some draw, the far mode named."""
  if not s.get("missed"):
    return ""
  names = [("far " if i == len(weights) - 1 else "") + f"{weights[i]:.2f}" for i in s["missed"]]
  return f" (missed: {', '.join(names)})"


def fmt(s, key="ratio"):
  return f"{s[key + '_mean']:.2f} +- {s[key + '_std']:.2f}"


def rescore(db):
  """Recomputes every row's summary and pass from its stored per-draw scores (one definition for all rows)."""
  for seed, m in db["mixtures"].items():
    if seed in db["edm"]:
      db["edm"][seed].update(summarise(db["edm"][seed]["draws"], m["teacher"]["draws"]))
  for r in db["results"]:
    for s in r.get("steps", {}).values():
      s.update(summarise(s["draws"], db["mixtures"][str(r["seed"])]["teacher"]["draws"]))
      s["pass"] = passes(r["objective"], s)


def write_table(db, path, args):
  rescore(db)
  seeds = sorted({int(s) for s in db["mixtures"]})
  held = [s for s in seeds if s in HELD_OUT_SEEDS]
  lines = [
      "# Every objective's toy2d preset on a seeded family of mixtures", "",
      "Generated by `experiments/toy_family.py` (commands below), each objective's `configs/<objective>.py:toy2d` "
      "preset as shipped, trained by `gendistill.train.train_and_evaluate` (the launcher's function) with only "
      "`data.toy2d_kind=family:SEED` changed; 2-core CPU shared with other jobs. Mixtures: gendistill/data/toy2d.py "
      f"`family` (tuning seeds {TUNING_SEEDS[0]}-{TUNING_SEEDS[-1]}, held-out seeds "
      f"{', '.join(map(str, HELD_OUT_SEEDS))}). Scores over several sample draws (mean +- std): sliced W2 (256 "
      "projections) to a fresh reference draw of the true mixture; `SW / teacher`: the mean SW over the mean SW of "
      "the exact analytic teacher's Heun NFE-35 samples on the same draws (+- the std of the per-draw ratios); modes found in "
      "every draw (of K), mode-weight TV (mass error), fraction of samples within 3 std (Mahalanobis) of a mode "
      "(`near`), the widest mode across its narrowest axis as a multiple of the true width (`widest thin axis`: "
      "1x is exact; the spread of the samples nearest to each mode within 6 std, evaluation.toy_metrics."
      "thin_axis_widths; '-' for rows scored before it was recorded). Bar: score students (and IGN/GAN, "
      "reported against it) <= 1.5x, all modes, near >= 0.9; "
      "consistency/progressive students <= 2x with all modes at 1 and at 2 steps. `init`: random = the preset as "
      "shipped; edm = students start from configs/edm.py:toy2d trained on the same mixture (teacher.init_workdir). "
      "`s`: seconds of the invocation that wrote the row (a few seconds where a finished run of the same config "
      "was reused and only rescored; its training time is in the results file of the run that trained it).",
      "", "Commands:", ""]
  lines += [f"    {c}" for c in db["commands"]] + [""]

  # Per-objective summary over held-out mixtures.
  lines += ["## Summary over the held-out mixtures", "",
            "Per objective and init: median SW / teacher (min - max over mixtures), mixtures with every mode found, "
            "mean near-mode fraction, mixtures passing the bar.", "",
            "| objective | init | steps | mixtures | SW / teacher median (min - max) | all modes | near | pass |",
            "|---|---|---|---|---|---|---|---|"]
  keyed = {}
  current = current_rows(db["results"], args)
  for r in current.values():
    if "error" not in r and r["seed"] in held:
      for steps, s in r["steps"].items():
        keyed.setdefault((r["objective"], r["init"], steps), []).append(s)
  for name in OBJECTIVES:
    for init in ("random", "edm"):
      for steps in ("1", "2"):
        rows = keyed.get((name, init, steps))
        if not rows:
          continue
        ratios = [s["ratio_mean"] for s in rows]
        lines.append(f"| {name} | {init} | {steps} | {len(rows)} | {np.median(ratios):.2f} ({min(ratios):.2f} - "
                     f"{max(ratios):.2f}) | {sum(s['modes_min'] == s['num_modes'] for s in rows)}/{len(rows)} | "
                     f"{np.mean([s['near'] for s in rows]):.2f} | {sum(s['pass'] for s in rows)}/{len(rows)} |")
  lines.append("")

  for seed in seeds:
    m = db["mixtures"][str(seed)]
    weights = toy2d.family(seed).weights
    lines += [f"## family:{seed} ({'held-out' if seed in HELD_OUT_SEEDS else 'tuning'}; K = {m['true']['num_modes']})",
              "", "| run | init | steps | SW (x 1e-2) | SW / teacher | modes | mass TV | near | widest thin axis | bar "
              "| pass | train steps | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def row(label, init, steps, s, bar="-", ok="-", train_steps="-", seconds="-"):
      ratio = fmt(s) if "ratio_mean" in s else "1 (itself)" if label == "teacher (analytic, Heun NFE 35)" else "-"
      return (f"| {label} | {init} | {steps} | {100 * s['sw_mean']:.2f} +- {100 * s['sw_std']:.2f} | {ratio} | "
              f"{s['modes_min']}/{s['num_modes']}{missed_text(s, weights)} | {s['tv']:.3f} | {s['near']:.3f} | "
              f"{'-' if s.get('thin') is None else format(s['thin'], '.2f') + 'x'} | {bar} | {ok} | {train_steps} | "
              f"{seconds} |")
    lines.append(row("true samples (noise floor)", "-", "-", {**m["true"]}))
    lines.append(row("teacher (analytic, Heun NFE 35)", "-", 35, m["teacher"]))
    if str(seed) in db["edm"]:
      e = db["edm"][str(seed)]
      lines.append(row("edm MLP (Heun NFE 35)", "-", 35, e, seconds=f"{e['seconds']:.0f}"))
    for r in sorted((r for r in db["results"] if r["seed"] == seed),
                    key=lambda r: (OBJECTIVES.index(r["objective"]), r["init"], r.get("finished", ""))):
      label = r["objective"]
      if current.get((r["objective"], r["seed"], r["init"])) is not r:
        label += f" (not the current preset: config {r.get('config_hash', '-')})"
      if "error" in r:
        lines.append(f"| {label} | {r['init']} | - | failed: {r['error'][:120]} | | | | | | | | | |")
        continue
      for steps, s in r["steps"].items():
        bar = f"{BAR[r['group']]}x" + ("" if r["group"] == "few_step" else f", near >= {NEAR_BAR}")
        lines.append(row(label, r["init"], steps, s, bar, "pass" if s["pass"] else "**fail**",
                         r["train_steps"], f"{r['seconds']:.0f}"))
    lines.append("")
  done = {(r["objective"], r["init"], r["seed"]) for r in current.values() if "error" not in r}
  no_init = [n for n in OBJECTIVES if not has_init(n)]
  missing = [f"{n} ({init})" for n in OBJECTIVES for init in ("random", "edm")
             if not (init == "edm" and n in no_init) and not any((n, init, s) in done for s in held)]
  lines += ["## Not run", "", "Objective/init pairs with no result on any held-out mixture: "
            + (", ".join(missing) if missing else "none") + f" ({', '.join(no_init)} start from no network: no edm "
            "rows).", ""]
  results_md.write(path + ".md", lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--objectives", default=",".join(OBJECTIVES))
  parser.add_argument("--seeds", default=",".join(map(str, HELD_OUT_SEEDS)), help="e.g. 100-102 or 0,3")
  parser.add_argument("--init", choices=("random", "edm"), default="random")
  parser.add_argument("--draws", type=int, default=5)
  parser.add_argument("--num_samples", type=int, default=4000)
  parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "toy_family"))
  parser.add_argument("--edm_steps", type=int, default=0, help="override configs/edm.py:toy2d's num_steps")
  parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (not as shipped)")
  parser.add_argument("--out", default=OUT)
  parser.add_argument("--table_only", action="store_true", help="rewrite the .md from the .json; run nothing")
  parser.add_argument("--extra_json", action="append", default=[],
                      help="another results .json whose rows the .md also shows (read, never written)")
  args = parser.parse_args()
  if args.table_only:
    write_table(with_extra(load(args.out + ".json"), args.extra_json), args.out, args)
    return
  names = args.objectives.split(",")
  unknown = sorted(set(names) - set(OBJECTIVES))
  if unknown:
    parser.error(f"unknown objectives {unknown}; known: {', '.join(OBJECTIVES)}")
  db = {"commands": [], "mixtures": {}, "edm": {}, "results": []}   # this invocation's; save() merges
  command = "python experiments/toy_family.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--out"))
  if os.path.abspath(args.out) != OUT:   # another results file: its command must name it to reproduce it
    command += f" --out={relative(os.path.abspath(args.out))}"
  if args.set:
    command += "  # not as shipped: --set overrides"
  if command not in db["commands"]:
    db["commands"].append(command)

  def save():   # merged into what is on disk now: another invocation may have added results meanwhile
    import fcntl  # pylint: disable=g-import-not-at-top
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "results.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      disk = load(args.out + ".json")
      mine = {key(r) for r in db["results"]}
      disk["results"] = [r for r in disk["results"] if key(r) not in mine]
      disk["results"] += db["results"]
      disk["mixtures"].update(db["mixtures"])
      disk["edm"].update(db["edm"])
      disk["commands"] += [c for c in db["commands"] if c not in disk["commands"]]
      with open(args.out + ".json.tmp", "w") as f:
        json.dump(disk, f, indent=1)
      os.replace(args.out + ".json.tmp", args.out + ".json")
      write_table(with_extra(disk, args.extra_json), args.out, args)

  for seed in parse_seeds(args.seeds):
    mixture = Mixture(seed, args)
    db["mixtures"][str(seed)] = {"teacher": mixture.teacher, "true": mixture.true}
    print(f"family:{seed} K={mixture.mix.num_components} teacher SW {mixture.teacher['sw_mean']:.4f} "
          f"true {mixture.true['sw_mean']:.4f}", flush=True)
    init_dir = None
    if args.init == "edm":
      init_dir, db["edm"][str(seed)] = edm_workdir(mixture, args)
      print(f"  edm Heun SW / teacher {fmt(db['edm'][str(seed)])}", flush=True)
    for name in names:
      if init_dir and not has_init(name):
        print(f"  {name}: skipped with --init=edm (its init starts from no network)", flush=True)
        continue
      try:
        r = run_one(name, mixture, args)
      except train.Preempted:   # stopped from outside: stop here too (a rerun resumes), not a row of the table
        save()
        raise
      except Exception as e:  # pylint: disable=broad-except   # a failed run is a row of the table, not the end
        traceback.print_exc()
        r = {"objective": name, "group": group(name), "seed": seed, "init": args.init, "config_hash": "-",
             "error": f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/").replace(ROOT + os.sep, "")}
      r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
      db["results"] = [x for x in db["results"] if key(x) != key(r)] + [r]
      if "error" not in r:
        print(f"  {name:13s} " + " ".join(f"{k}-step SW/teacher {fmt(s)} modes {s['modes_min']}/{s['num_modes']} "
                                          f"near {s['near']:.2f} {'pass' if s['pass'] else 'FAIL'}"
                                          for k, s in r["steps"].items()) + f" ({r['seconds']:.0f} s)", flush=True)
      save()
    save()


if __name__ == "__main__":
  main()
