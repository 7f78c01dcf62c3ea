"""Bad-input battery (issue 16): bad inputs through the launcher and the evaluate CLI, as a user would type them,
then kill -9 and SIGTERM cycles that must resume bit-exact.

    python benchmarks/bad_inputs.py [--out=benchmarks/bad_inputs.md] [--kills=24] [--sigterms=3]

Each bad input runs in a subprocess on a fresh workdir (or a fresh copy of a trained toy2d smoke run) and is
classified from the outside:
  clear      non-zero exit, no traceback, and the message names the cause (the case's pattern);
  partly     non-zero exit and the cause named, but behind a traceback;
  unclear    exit 0 (silently accepted), or the cause not named;
  data lost  any checkpoint, metrics row or config of the existing run changed or removed.
Then the kill -9 cycles (random points, about half of them while a checkpoint is being written) and SIGTERM
cycles on one workdir, resumed to the end, must give final parameters bit-equal to an uninterrupted run and a
metrics.jsonl without duplicate rows. Writes the table to --out.
"""
import argparse
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
ENV.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax_compilation"))
ENV.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
SMOKE = "--config=configs/edm.py:toy2d,smoke"
BASE_ARGS = [SMOKE, "--config.train.num_steps=4", "--config.train.checkpoint_every=2"]


def run(module, args, timeout=600):
  t0 = time.time()
  p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                     timeout=timeout)
  return p.returncode, p.stdout + p.stderr, time.time() - t0


def snapshot(workdir):
  """Hashes of everything a user must not lose: checkpoints, metrics, config."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "checkpoints", "**", "*"), recursive=True)) + [
      os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "config.json")]:
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha1(f.read()).hexdigest()
  return out


# ---------------------------------------------------------------------------------------------------------
# Setups: each gets (workdir, tmp) and prepares the case; returns extra args (or None).

def truncate_config(w, t):
  path = os.path.join(w, "config.json")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[: len(text) // 2])


def remove_checkpoints(w, t):
  shutil.rmtree(os.path.join(w, "checkpoints"))


def corrupt_newest(w, t):
  for path in glob.glob(os.path.join(w, "checkpoints", "4", "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")


def npz(name, **arrays):
  def make(w, t):
    import numpy as np  # pylint: disable=g-import-not-at-top
    np.savez(os.path.join(t, name), **arrays)
  return make


def text_file(name):
  def make(w, t):
    with open(os.path.join(t, name), "w") as f:
      f.write("not an npz")
  return make


def file_at_workdir(w, t):
  shutil.rmtree(w, ignore_errors=True)
  with open(w, "w") as f:
    f.write("a file, not a folder")


class Held:
  """Setups that hold the workdir lock as another process would (released after the case)."""
  lock = None

  def __call__(self, w, t):
    from gendistill import train  # pylint: disable=g-import-not-at-top
    Held.lock = train.WorkdirLock(w)


def _cases():
  """(name, module, args, existing run?, setup, pattern the message must match)."""
  m, e = "gendistill.main", "gendistill.evaluate"
  cases = []
  def main(name, overrides, pattern, existing=False, setup=None, config=SMOKE):
    args = [config] + [f"--config.{o}" for o in overrides] if config else [f"--config.{o}" for o in overrides]
    cases.append((name, m, args, existing, setup, pattern))
  for key, value in [("train.keep_checkpoints", 0), ("train.keep_checkpoints", -1)]:
    main(f"{key}={value} on an existing run", [f"{key}={value}"], re.escape(key), existing=True)
  for key, value in [("train.checkpoint_every", 0), ("train.log_every", 0), ("train.num_steps", -5),
                     ("train.num_grid_samples", 0), ("train.sample_every", -1), ("train.eval_every", -1),
                     ("train.max_nonfinite_logs", 0), ("train.microbatches", 0), ("train.max_skipped_fraction", 1.5),
                     ("train.max_param_norm", -1.0), ("eval.num_samples", 0), ("eval.num_samples", -5),
                     ("eval.batch_size", 0), ("eval.steps", -1), ("eval.inception_batch_size", 0),
                     ("eval.ref_images", -3), ("eval.inception_weights", "/nonexistent/w.npz"),
                     ("eval.ref_stats", "/nonexistent/s.npz"), ("data.batch_size", 0), ("data.batch_size", -8),
                     ("data.name", "mnist"), ("sampler.num_steps", 0), ("sampler.sigma_min", 0.0),
                     ("sampler.sigma_max", 0.001), ("objective.edm.optimizer.lr", 0.0),
                     ("objective.edm.optimizer.lr", -1.0), ("objective.edm.optimizer.lr", "inf"),
                     ("objective.edm.optimizer.lr", "nan"), ("objective.edm.optimizer.b1", 1.5),
                     ("objective.edm.optimizer.warmup_steps", -1), ("objective.edm.optimizer.eps", -1.0),
                     ("objective.edm.optimizer.name", "adamx"), ("objective.name", "edn"),
                     ("teacher.source", "magic"), ("teacher.source", "workdir"),
                     ("network.kind", "transformer"), ("data.toy2d_kind", "ring9")]:
    main(f"{key}={value}", [f"{key}={value}"], re.escape(key.split(".")[-1] if key.endswith(("source", "kind", "name"))
                                                         else key) if "optimizer.name" not in key else "adamx")
  main("teacher.workdir missing", ["teacher.source=workdir", "teacher.workdir=/nonexistent/run"], r"teacher\.workdir")
  main("eval.ref_stats mis-shaped", ["eval.ref_stats={t}/small.npz"], r"eval\.ref_stats.*2048",
       setup=npz("small.npz", mu=[0.0] * 64, sigma=[[0.0] * 64] * 64))
  main("eval.ref_stats without sigma", ["eval.ref_stats={t}/nosigma.npz"], r"eval\.ref_stats.*mu and sigma",
       setup=npz("nosigma.npz", mu=[0.0] * 2048))
  main("eval.ref_stats not an npz", ["eval.ref_stats={t}/bad.npz"], r"eval\.ref_stats.*readable", setup=text_file("bad.npz"))
  main("misspelt nested key", ["objective.edm.optimizer.learning_rate=1"], "learning_rate")
  main("misspelt key", ["objective.edm.p_meen=0"], "p_meen")
  main("misspelt section key", ["data.batch_szie=3"], "batch_szie")
  main("wrong type", ["data.batch_size=abc"], "batch_size")
  main("float for an int", ["train.num_steps=1.5"], "num_steps")
  main("wrong type seed", ["seed=abc"], "seed")
  main("misspelt preset flag", [], "smoky", config="--config=configs/edm.py:toy2d,smoky")
  main("unknown preset dataset", [], "mnist", config="--config=configs/edm.py:mnist")
  main("missing config file", [], "nope.py", config="--config=configs/nope.py:toy2d")
  main("teacher= on an analytic preset", [], r"teacher\.workdir",
       config="--config=configs/sid.py:toy2d,smoke,teacher=/nonexistent/run")
  main("teacher of another dataset/resolution", ["teacher.source=workdir", "teacher.workdir={base}"],
       r"teacher.*\(16, 16, 1\)", config="--config=configs/sid.py:digits,smoke")
  main("resume with a changed lr", ["objective.edm.optimizer.lr=0.002"], r"objective\.edm\.optimizer\.lr",
       existing=True)
  main("resume with a changed network", ["network.mlp_hidden=48"], r"network\.mlp_hidden", existing=True)
  main("truncated config.json", [], r"config\.json.*not valid JSON", existing=True, setup=truncate_config)
  main("checkpoints/ vanished", [], "checkpoints/ folder is missing", existing=True, setup=remove_checkpoints)
  main("second writer on a busy workdir", [], r"in use by another gendistill run \(pid", existing=True, setup=Held())
  main("workdir is a file", [], "workdir|exists|directory", setup=file_at_workdir)
  cases.append(("no --workdir", m, [SMOKE], False, None, "workdir"))
  cases.append(("no --config", m, [], False, None, "config"))
  cases.append(("unexpected argument", m, [SMOKE, "extra"], False, None, "extra"))

  def ev(name, args, pattern, existing=True, setup=None):
    cases.append((name, e, args, existing, setup, pattern))
  ev("evaluate --num_samples=0", ["--num_samples=0"], "num_samples")
  ev("evaluate --num_samples=-5", ["--num_samples=-5"], "num_samples")
  ev("evaluate --batch_size=0", ["--batch_size=0"], "batch_size")
  ev("evaluate --batch_size=-1", ["--batch_size=-1"], "batch_size")
  ev("evaluate --steps=-1", ["--steps=-1"], "steps")
  ev("evaluate --num_samples=abc", ["--num_samples=abc"], "num_samples")
  ev("evaluate --checkpoint=7 (absent)", ["--checkpoint=7"], r"step 7.*steps \[2, 4\]")
  ev("evaluate --checkpoint of a corrupt step", ["--checkpoint=4"], r"restore.*step 4", setup=corrupt_newest)
  ev("evaluate a missing workdir", ["--workdir=/nonexistent/run"], "nonexistent/run", existing=False)
  ev("evaluate an empty workdir", [], "config.json", existing=False)
  ev("evaluate a truncated config.json", [], r"config\.json.*not valid JSON", setup=truncate_config)
  ev("evaluate --inception_weights missing", ["--inception_weights=/nonexistent/w.npz", "--ref_images_from_data=8"],
     "inception_weights")
  ev("evaluate --inception_weights without a reference", ["--inception_weights={t}/w.npz"], "ref_stats",
     setup=npz("w.npz", x=[0.0]))
  ev("evaluate --ref_stats mis-shaped", ["--inception_weights={t}/w.npz", "--ref_stats={t}/small.npz"],
     r"ref_stats.*2048", setup=lambda w, t: (npz("w.npz", x=[0.0])(w, t),
                                            npz("small.npz", mu=[0.0] * 64, sigma=[[0.0] * 64] * 64)(w, t)))
  ev("evaluate --ref_stats missing", ["--inception_weights={t}/w.npz", "--ref_stats=/nonexistent/s.npz"],
     "ref_stats", setup=npz("w.npz", x=[0.0]))
  ev("evaluate --ref_images_from_data=-1", ["--ref_images_from_data=-1"], "ref_images_from_data")
  cases.append(("evaluate without --workdir", e, [], False, None, "workdir"))
  ev("evaluate unexpected argument", ["extra"], "extra")
  return cases


def classify(rc, out, pattern):
  named = re.search(pattern, out, re.S) is not None
  if rc == 0:
    return "unclear"
  if not named:
    return "unclear"
  return "partly" if "Traceback" in out else "clear"


def battery(tmp, base):
  rows = []
  for i, (name, module, args, existing, setup, pattern) in enumerate(_cases()):
    t = os.path.join(tmp, f"case{i}")
    os.makedirs(t)
    w = os.path.join(t, "run")
    if existing:
      shutil.copytree(base, w)
    else:
      os.makedirs(w)
    if setup is not None:
      setup(w, t)
    before = snapshot(w) if existing else {}
    args = [a.format(t=t, base=base) for a in args]
    if not any(a.startswith("--workdir") for a in args) and "without --workdir" not in name and name != "no --workdir":
      args.append(f"--workdir={w}")
    try:
      rc, out, secs = run(module, args)
    finally:
      if Held.lock is not None:
        Held.lock.release()
        Held.lock = None
    after = snapshot(w) if existing and os.path.isdir(w) else {}
    lost = [k for k, v in before.items() if after.get(k) != v]
    verdict = "data lost" if lost else classify(rc, out, pattern)
    last = [line for line in out.strip().splitlines() if line.strip()][-1:] or [""]
    rows.append(dict(case=name, module=module.split(".")[-1], rc=rc, verdict=verdict, seconds=round(secs, 1),
                     message=last[0][:220], lost=lost[:3]))
    print(f"[{i + 1}] {verdict:9s} rc={rc} {name}: {last[0][:160]}", flush=True)
  return rows


# ---------------------------------------------------------------------------------------------------------
# kill -9 / SIGTERM cycles.

CYCLE_ARGS = [SMOKE, "--config.train.num_steps=5000", "--config.train.checkpoint_every=25",
              "--config.train.log_every=25", "--config.data.batch_size=64"]


def _launch(workdir):
  return subprocess.Popen([sys.executable, "-m", "gendistill.main", f"--workdir={workdir}", *CYCLE_ARGS], cwd=ROOT,
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _saved(workdir):
  return sorted(int(os.path.basename(d)) for d in glob.glob(os.path.join(workdir, "checkpoints", "*"))
                if os.path.basename(d).isdigit())


def _tmp_dirs(workdir):
  """orbax writes a checkpoint into a temporary folder and renames it when complete."""
  return {d for d in glob.glob(os.path.join(workdir, "checkpoints", "*")) if "tmp" in os.path.basename(d)}


def interrupt_cycles(workdir, kills, sigterms, seed=0):
  rnd = random.Random(seed)
  log = []
  plan = ["kill_save" if i % 2 else "kill" for i in range(kills)] + ["term"] * sigterms
  rnd.shuffle(plan)
  for kind in plan:
    before = _saved(workdir)
    old_tmp = _tmp_dirs(workdir)      # left by earlier kills during saves
    _saving = lambda: bool(_tmp_dirs(workdir) - old_tmp)
    proc = _launch(workdir)
    deadline = time.time() + 300
    # Wait for progress past what this launch restored, then a random moment (or the next save in flight).
    while time.time() < deadline and proc.poll() is None and _saved(workdir)[-1:] == before[-1:]:
      time.sleep(0.01)
    if kind == "kill_save":
      while time.time() < deadline and proc.poll() is None and not _saving():
        time.sleep(0.001)
    else:
      time.sleep(rnd.uniform(0.0, 0.2))
    if proc.poll() is not None:
      log.append((kind, "finished before the signal"))
      break
    during_save = _saving()
    proc.send_signal(signal.SIGTERM if kind == "term" else signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    ok = proc.returncode == (143 if kind == "term" else -signal.SIGKILL)
    clean = "Traceback" not in err and "Event loop is closed" not in err if kind == "term" else True
    log.append((kind, f"rc={proc.returncode} during_save={during_save} saved={_saved(workdir)[-1:]}"
                      f"{'' if ok and clean else ' UNEXPECTED: ' + err[-500:]}"))
    print(log[-1], flush=True)
  proc = _launch(workdir)
  _, err = proc.communicate(timeout=1200)
  return log, proc.returncode, err


def _final(workdir):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import edm as edm_config  # pylint: disable=g-import-not-at-top
  from gendistill import checkpoint as ckpt_lib, data as data_lib, objectives  # pylint: disable=g-import-not-at-top
  config = edm_config.get_config("toy2d,smoke")
  config.data.batch_size = 64
  spec = data_lib.build(config.data).spec
  state = ckpt_lib.restore_state(workdir, objectives.build(config, spec), spec)
  return int(state.step), jax.tree.map(np.asarray, jax.device_get((state.params, state.ema, state.opt_state)))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "bad_inputs.md"))
  parser.add_argument("--kills", type=int, default=24)
  parser.add_argument("--sigterms", type=int, default=3)
  parser.add_argument("--skip_battery", action="store_true")
  args = parser.parse_args()
  tmp = tempfile.mkdtemp(prefix="bad_inputs_")
  t0 = time.time()
  base = os.path.join(tmp, "base")
  rc, out, _ = run("gendistill.main", [f"--workdir={base}", *BASE_ARGS])
  assert rc == 0, out[-3000:]
  rows = [] if args.skip_battery else battery(tmp, base)

  cycles = []
  exact = None
  if args.kills or args.sigterms:
    import numpy as np  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    interrupted, straight = os.path.join(tmp, "interrupted"), os.path.join(tmp, "straight")
    cycles, rc_i, err_i = interrupt_cycles(interrupted, args.kills, args.sigterms)
    p = subprocess.run([sys.executable, "-m", "gendistill.main", f"--workdir={straight}", *CYCLE_ARGS], cwd=ROOT,
                       env=ENV, capture_output=True, text=True)
    assert rc_i == 0 and p.returncode == 0, (err_i[-2000:], p.stderr[-2000:])
    (sa, a), (sb, b) = _final(interrupted), _final(straight)
    same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    from gendistill import train  # pylint: disable=g-import-not-at-top
    steps = [r["step"] for r in train.read_metrics(interrupted) if "denoiser/loss" in r]
    exact = dict(bit_exact=same and sa == sb == 5000, duplicate_rows=len(steps) - len(set(steps)),
                 kills=sum(k.startswith("kill") for k, _ in cycles),
                 kills_during_save=sum(k.startswith("kill") and "during_save=True" in s for k, s in cycles),
                 sigterms=sum(k == "term" for k, _ in cycles),
                 unexpected=sum("UNEXPECTED" in s for _, s in cycles))

  counts = {v: sum(r["verdict"] == v for r in rows) for v in ("clear", "partly", "unclear", "data lost")}
  cmd = "python benchmarks/bad_inputs.py " + " ".join(sys.argv[1:])
  lines = ["# Bad-input battery (issue 16)", "", f"Command: `{cmd.strip()}` ({time.time() - t0:.0f} s on a loaded "
           "2-core CPU). Every case runs the launcher (`main`) or `gendistill.evaluate` in a subprocess, on a fresh "
           "workdir or a copy of a trained toy2d smoke run; see the script's docstring for the verdicts.", ""]
  if rows:
    lines += [f"**{len(rows)} bad inputs: {counts['clear']} clear, {counts['partly']} partly clear, "
              f"{counts['unclear']} unclear, {counts['data lost']} lost data.**", "",
              "| # | entry | case | exit | verdict | last line of output |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
      msg = r["message"].replace("|", "\\|")
      lines.append(f"| {i} | {r['module']} | {r['case'].replace('|', '/')} | {r['rc']} | {r['verdict']} | {msg} |")
  if exact is not None:
    lines += ["", "## kill -9 and SIGTERM", "",
              f"{exact['kills']} kill -9 ({exact['kills_during_save']} while a checkpoint was being written) and "
              f"{exact['sigterms']} SIGTERM on one run of 5000 steps (checkpoint every 25), each relaunched: "
              f"final parameters, EMA and optimizer state bit-equal to an uninterrupted run: "
              f"**{exact['bit_exact']}**; duplicate metric rows: **{exact['duplicate_rows']}**; unexpected exits: "
              f"{exact['unexpected']}.", "", "| # | signal | result |", "|---|---|---|"]
    lines += [f"| {i} | {k} | {s[:200]} |" for i, (k, s) in enumerate(cycles, 1)]
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump(dict(rows=rows, counts=counts, cycles=cycles, exact=exact), f, indent=1)
  print("\n".join(lines[:6]))
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
