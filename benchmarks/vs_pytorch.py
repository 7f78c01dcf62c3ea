"""The library against the official PyTorch code on the same networks, timed side by side.

    .venv/bin/python benchmarks/vs_pytorch.py --official_sid=REF/SiD --official_edm=REF/edm \
        --torch_python=TORCHVENV/bin/python --md=benchmarks/vs_pytorch.md

REF/SiD and REF/edm are local checkouts of github.com/mingyuanzhou/SiD and github.com/NVlabs/edm (read and run
from there, never copied here); TORCHVENV a virtual environment with torch (CPU), click, tqdm and pillow (what
edm's generate.py imports). The official side is driven by a worker process started with --torch_python: it
builds EDM's EDMPrecond(SongUNet) and calls EDM's EDMLoss, SiD's SID_EDMLoss and EDM's edm_sampler; the loop
around them (zero_grad, backward, nan_to_num of the gradients, Adam step, EMA lerp) follows the official training
loops. The library side runs the objectives' jitted train steps as `gendistill.train` does (ShardedObjective on
one CPU device, state donated) and their jitted samplers.

Measures, per configuration:
  edm step    one EDM training step (loss, backward, Adam, EMA) of the denoiser;
  sid step    one SiD iteration: fake-score update, then generator update against the teacher, generator EMA;
  one-step    generation of the batch with the generator, G(sigma_init z) (no gradient);
  heun 35     EDM's Heun sampler with 18 steps (NFE 35) on the same network and batch.
With --profile, also the network passes and the optimizer alone (the time profile of the steps), written to
--profile_md:
  forward     one forward pass of the batch (eval mode, no gradient; the generator's pass in the fake update);
  grad input  forward + gradient of sum(w * D(x)) to the input x (eval mode, parameters frozen; the teacher's and
              the fake score's passes in the generator update);
  grad params forward + gradient of sum(w * D(x)) to the parameters (train mode, dropout; the denoiser's pass in
              an EDM step, the fake score's and the generator's in a SiD iteration);
  optimizer   Adam + EMA on the network's parameters from given gradients (library: state.apply_gradients with
              its finiteness test and ema_update; official: nan_to_num of the gradients, Adam.step, EMA lerp).
From the medians: EDM step = grad params + optimizer + the rest; SiD iteration = forward + 2 grad input + 2 grad
params (its network passes) + 2 optimizer steps + the rest. --dtype=bfloat16 runs the library's networks in
bfloat16 (network.dtype) and the official side under torch.autocast; EDM's EDMPrecond asserts a float32 output
outside its own use_fp16 path, so the official steps fail under autocast (the library's side alone is usable).
Both sides run in turn, measure by measure, for --rounds rounds after warm-up (library: compile; torch: one call);
the table gives medians and the ratio library / official (< 1: the library is faster), with the 1-minute load
average before and after. Also reported: the compiled SiD step's convolutions and FLOPs against one forward pass.

Configurations (EDM's SongUNet, DDPM++ standard encoder/decoder, positional embedding, dropout 0.1, fp32):
  D  16x16x1, 10 classes, 32 channels, mult (1, 2), 2 blocks, attention only in the 8x8 decoder's first
     block (as always in SongUNet), batch 64 (982,401 parameters);
  S  32x32x3, unconditional, 64 channels, mult (1, 2, 2), 2 blocks, attention at 16, batch 16 (6,989,891).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "D": dict(resolution=16, channels=1, classes=10, model_channels=32, channel_mult=(1, 2), num_blocks=2,
              attn=(), batch=64),
    "T": dict(resolution=8, channels=1, classes=2, model_channels=16, channel_mult=(1,), num_blocks=1,
              attn=(), batch=4),   # a smoke test of this script
    "S": dict(resolution=32, channels=3, classes=0, model_channels=64, channel_mult=(1, 2, 2), num_blocks=2,
              attn=(16,), batch=16),
}
MEASURES = ("edm step", "sid step", "one-step", "heun 35")
PROFILE_MEASURES = ("forward", "grad input", "grad params", "optimizer")
SIGMA_INIT = 2.5
HEUN_STEPS = 18


# ------------------------------------------------------------------------------------------------------------
# The official side (runs under --torch_python; imports torch and the official checkouts only).


def torch_worker(official_sid: str, official_edm: str, threads: int, dtype: str = "float32"):
  import contextlib
  import copy
  import importlib.util
  import torch
  torch.set_num_threads(threads)
  sys.path.insert(0, official_edm)
  from training import networks, loss as edm_loss_lib   # EDM's
  import generate as edm_generate                        # EDM's edm_sampler
  spec = importlib.util.spec_from_file_location("sid_loss", os.path.join(official_sid, "training", "sid_loss.py"))
  sid_loss_lib = importlib.util.module_from_spec(spec)
  sys.modules["sid_loss"] = sid_loss_lib   # its persistence decorator looks itself up there
  spec.loader.exec_module(sid_loss_lib)

  def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

  nets = {}
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "quit":
      return
    if cmd["op"] == "setup":
      c = CONFIGS[cmd["config"]]
      torch.manual_seed(0)
      net = networks.EDMPrecond(img_resolution=c["resolution"], img_channels=c["channels"], label_dim=c["classes"],
                                use_fp16=False, sigma_data=0.5, model_type="SongUNet",
                                model_channels=c["model_channels"], channel_mult=list(c["channel_mult"]),
                                num_blocks=c["num_blocks"], attn_resolutions=list(c["attn"]), dropout=0.10,
                                embedding_type="positional", encoder_type="standard", decoder_type="standard",
                                augment_dim=0)
      b = c["batch"]
      shape = (b, c["channels"], c["resolution"], c["resolution"])
      labels = (torch.eye(c["classes"])[torch.arange(b) % c["classes"]] if c["classes"] else None)
      images = torch.rand(shape) * 2 - 1
      teacher = net.eval().requires_grad_(False)
      denoiser = copy.deepcopy(net).train().requires_grad_(True)
      fake = copy.deepcopy(net).train().requires_grad_(True)
      gen = copy.deepcopy(net).train().requires_grad_(True)
      gen_ema = copy.deepcopy(gen).eval().requires_grad_(False)
      den_ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
      opt = dict(d=torch.optim.Adam(denoiser.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8),
                 f=torch.optim.Adam(fake.parameters(), lr=1e-5, betas=(0.0, 0.999), eps=1e-8),
                 g=torch.optim.Adam(gen.parameters(), lr=1e-5, betas=(0.0, 0.999), eps=1e-8))
      nets = dict(c=c, shape=shape, labels=labels, images=images, teacher=teacher, denoiser=denoiser, fake=fake,
                  gen=gen, gen_ema=gen_ema, den_ema=den_ema, opt=opt, edm_loss=edm_loss_lib.EDMLoss(),
                  sid_loss=sid_loss_lib.SID_EDMLoss(),
                  # fixed inputs of the profile's network passes and optimizer step
                  x=torch.randn(shape), sigma=(torch.randn(b, 1, 1, 1) * 1.2 - 1.2).exp(), w=torch.randn(shape),
                  grads=[torch.randn_like(p) * 1e-3 for p in denoiser.parameters()])
      reply({"params": sum(p.numel() for p in net.parameters())})
      continue
    n = nets
    b = n["shape"][0]
    zeros9 = torch.zeros(b, 9)

    def finish_update(module, opt):
      for p in module.parameters():
        if p.grad is not None:
          torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
      opt.step()

    def ema(ema_net, net, beta=0.999):
      with torch.no_grad():
        for pe, p in zip(ema_net.parameters(), net.parameters()):
          pe.copy_(p.detach().lerp(pe, beta))

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext())
    t0 = time.perf_counter()
    what = cmd["measure"]
    with autocast:
      run_measure(n, what, b, zeros9, finish_update, ema)
    reply({"s": time.perf_counter() - t0})


def run_measure(n, what, b, zeros9, finish_update, ema):
  """One measure on the official side (under the worker's autocast context, if any)."""
  import torch
  import generate as edm_generate   # EDM's edm_sampler (its checkout is on sys.path)
  if what == "forward":
    with torch.no_grad():
      n["teacher"](n["x"], n["sigma"], n["labels"])
  elif what == "grad input":
    x = n["x"].clone().requires_grad_(True)
    (n["teacher"](x, n["sigma"], n["labels"]) * n["w"]).sum().backward()
  elif what == "grad params":
    n["denoiser"].train().requires_grad_(True)
    n["opt"]["d"].zero_grad(set_to_none=True)
    (n["denoiser"](n["x"], n["sigma"], n["labels"]) * n["w"]).sum().backward()
  elif what == "optimizer":
    for p, g in zip(n["denoiser"].parameters(), n["grads"]):
      p.grad = g
    finish_update(n["denoiser"], n["opt"]["d"])
    ema(n["den_ema"], n["denoiser"])
  elif what == "edm step":
    n["denoiser"].train().requires_grad_(True)
    n["opt"]["d"].zero_grad(set_to_none=True)
    loss = n["edm_loss"](net=n["denoiser"], images=n["images"], labels=n["labels"])
    loss.sum().mul(1.0 / b).backward()
    finish_update(n["denoiser"], n["opt"]["d"])
    ema(n["den_ema"], n["denoiser"])
  elif what == "sid step":
    fake, gen = n["fake"], n["gen"]
    sigma_init = SIGMA_INIT * torch.ones(b, 1, 1, 1)
    # fake-score update: generator in eval mode without gradients, fake score in train mode.
    fake.train().requires_grad_(True)
    gen.eval().requires_grad_(False)
    n["opt"]["f"].zero_grad(set_to_none=True)
    z = SIGMA_INIT * torch.randn(n["shape"])
    x_g = gen(z, sigma_init, n["labels"], augment_labels=zeros9)
    loss = n["sid_loss"](fake_score=fake, images=x_g, labels=n["labels"])
    loss.sum().mul(1.0 / b).backward()
    fake.eval().requires_grad_(False)
    finish_update(fake, n["opt"]["f"])
    # generator update against the teacher and the frozen fake score.
    gen.train().requires_grad_(True)
    n["opt"]["g"].zero_grad(set_to_none=True)
    z = SIGMA_INIT * torch.randn(n["shape"])
    x_g = gen(z, sigma_init, n["labels"], augment_labels=zeros9)
    loss = n["sid_loss"].generator_loss(true_score=n["teacher"], fake_score=fake, images=x_g, labels=n["labels"],
                                        augment_pipe=None, alpha=1.2, tmax=800)
    loss.sum().mul(100.0 / b).backward()
    gen.eval().requires_grad_(False)
    finish_update(gen, n["opt"]["g"])
    ema(n["gen_ema"], gen)
  elif what == "one-step":
    with torch.no_grad():
      z = SIGMA_INIT * torch.randn(n["shape"])
      n["gen_ema"](z, SIGMA_INIT * torch.ones(b, 1, 1, 1), n["labels"], augment_labels=zeros9)
  elif what == "heun 35":
    with torch.no_grad():
      edm_generate.edm_sampler(n["den_ema"], torch.randn(n["shape"]), n["labels"], num_steps=HEUN_STEPS)
  else:
    raise ValueError(what)


# ------------------------------------------------------------------------------------------------------------
# The library side.


class Library:
  """The library's steps and samplers for one configuration, compiled."""

  def __init__(self, name: str, dtype: str = "float32", profile: bool = False, which=("edm", "sid")):
    sys.path.insert(0, ROOT)
    import gendistill  # noqa: F401  (CPU flags before jax starts)
    import jax
    import numpy as np
    from configs import edm as edm_config, sid as sid_config
    from gendistill import objectives, sharding, teachers
    from gendistill import state as state_lib
    from gendistill.data import DataSpec
    self.jax = jax
    c = CONFIGS[name]
    self.spec = spec = DataSpec("image", (c["resolution"], c["resolution"], c["channels"]), c["classes"])
    network = dict(kind="unet", model_channels=c["model_channels"], channel_mult=tuple(c["channel_mult"]),
                   num_blocks=c["num_blocks"], attn_resolutions=tuple(c["attn"]), dropout=0.1, label_dropout=0.0,
                   dtype=dtype)
    b = c["batch"]
    rng = np.random.default_rng(0)
    local = {"image": rng.uniform(-1, 1, (b,) + spec.shape).astype(np.float32)}
    if c["classes"]:
      local["label"] = (np.arange(b) % c["classes"]).astype(np.int32)
    self.labels = local.get("label")
    self.batch_size = b
    self.steps, self.states, self.objectives, self.sharded = {}, {}, {}, {}
    for objective_name, module in (("edm", edm_config), ("sid", sid_config)):
      if objective_name not in which:
        continue
      config = module.get_config("digits")
      config.unlock()
      config.network.update(network)
      config.data.batch_size = b
      config.sampler.update(num_steps=HEUN_STEPS, s_churn=0.0)
      mesh = sharding.make_mesh(config.mesh)
      teacher = None if objective_name == "edm" else teachers.random_network(config.network, spec)
      objective = objectives.build(config, spec)
      sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh)
      teacher = sharded.put_teacher(teacher)
      state = sharded.init(jax.random.key(0), teacher)
      batch = sharded.put_batch(local)
      self.objectives[objective_name], self.sharded[objective_name] = objective, sharded
      self.states[objective_name] = state
      self.steps[objective_name] = (sharded, batch, teacher)
      if objective_name == "sid":
        self.sid_config, self.sid_teacher = config, teacher
      else:
        self.edm_config = config
    self.params = sum(x.size for x in jax.tree.leaves(self.states["edm"].params["denoiser"]))
    labels = None if self.labels is None else jax.numpy.asarray(self.labels)
    self.sample = {
        "one-step": jax.jit(lambda s, key: self.objectives["sid"].sample(s, key, b, labels)),   # built when used
        "heun 35": jax.jit(lambda s, key: self.objectives["edm"].sample(s, key, b, labels, HEUN_STEPS)),
    }
    self.key = jax.random.key(1)
    if profile:
      self._build_profile(c, state_lib)

  def _build_profile(self, c, state_lib):
    """The profile's network passes and optimizer step (see the module docstring), jitted."""
    jax, jnp = self.jax, self.jax.numpy
    objective, spec, b = self.objectives["edm"], self.spec, self.batch_size
    apply_fn = objective.apply_fn
    keys = jax.random.split(jax.random.key(2), 4)
    x = jax.random.normal(keys[0], (b,) + spec.shape)
    w = jax.random.normal(keys[1], (b,) + spec.shape)
    sigma = jnp.exp(jax.random.normal(keys[2], (b,)) * 1.2 - 1.2)
    labels = None if self.labels is None else jax.nn.one_hot(self.labels, spec.num_classes)
    weighted = lambda p, x, train, rngs=None: jnp.sum(apply_fn(p, x, sigma, labels, train=train, rngs=rngs) * w)
    forward = jax.jit(lambda p, x: apply_fn(p, x, sigma, labels, train=False))
    grad_input = jax.jit(jax.grad(lambda x, p: weighted(p, x, False)))
    grad_params = jax.jit(jax.grad(lambda p, x, key: weighted(p, x, True, {"dropout": key})))
    params = self.states["edm"].params["denoiser"]
    tx = state_lib.make_optimizer(self.edm_config.objective.edm.optimizer)   # as the edm step's
    grads = jax.tree.map(lambda p: 1e-3 * jax.random.normal(keys[3], p.shape, p.dtype), params)

    def optimizer_step(state, grads):
      state, _ = state_lib.apply_gradients(state, "denoiser", grads, tx)
      return state.replace(ema={"denoiser": state_lib.ema_update(state.ema["denoiser"],
                                                                 state.params["denoiser"], 0.999)})
    optimizer_step = jax.jit(optimizer_step, donate_argnums=0)
    self.opt_state = state_lib.create(jax.random.key(3), {"denoiser": jax.tree.map(jnp.copy, params)},
                                      {"denoiser": tx}, ema_roles=("denoiser",))
    edm_params = lambda: self.states["edm"].params["denoiser"]   # the live state (the edm step donates it)
    self.profile = {
        "forward": lambda: forward(edm_params(), x),
        "grad input": lambda: grad_input(x, edm_params()),
        "grad params": lambda: grad_params(edm_params(), x, self.key),
        "optimizer": self._run_optimizer(optimizer_step, grads),
    }

  def _run_optimizer(self, optimizer_step, grads):
    def run():
      self.opt_state = optimizer_step(self.opt_state, grads)
      return self.opt_state
    return run

  def run(self, what: str) -> float:
    jax = self.jax
    t0 = time.perf_counter()
    if what in PROFILE_MEASURES:
      jax.block_until_ready(self.profile[what]())
    elif what in ("edm step", "sid step"):
      name = what.split()[0]
      sharded, batch, teacher = self.steps[name]
      state, metrics = sharded.train_step(self.states[name], batch, teacher)
      jax.block_until_ready((state, metrics))
      self.states[name] = state
    else:
      state = self.states["sid" if what == "one-step" else "edm"]
      jax.block_until_ready(self.sample[what](state, self.key))
    return time.perf_counter() - t0

  def sid_program_facts(self) -> dict:
    """Convolutions and FLOPs of the compiled SiD step against one training-mode forward+nothing of the net."""
    import re
    jax, jnp = self.jax, self.jax.numpy
    sharded = self.sharded["sid"]
    step = sharded.lower_step(self.batch_size).compile()
    text = step.as_text()
    objective = self.objectives["sid"]
    params = self.states["sid"].params["generator"]
    spec, b = self.spec, self.batch_size
    x = jnp.zeros((b,) + spec.shape)
    labels = None if self.labels is None else jax.nn.one_hot(self.labels, spec.num_classes)
    sigma = jnp.ones((b,))
    rngs = {"dropout": jax.random.key(0)}

    def forward(p, x):
      return objective.apply_fn(p, x, sigma, labels, train=True, rngs=rngs)
    forward_program = jax.jit(forward).lower(params, x).compile()

    def windows(t):   # the window of each convolution: k x k for forward and input-gradient ones, the image for
      return re.findall(r" convolution\([^\n]*?window=\{size=(\d+)x", t)   # filter-gradient ones

    def flops(compiled):
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      return float(cost.get("flops", float("nan")))

    step_windows = [int(w) for w in windows(text)]
    n_f = len(windows(forward_program.as_text()))
    return {"forward_convolutions": n_f, "forward_flops": flops(forward_program),
            "step_convolutions": len(step_windows), "step_flops": flops(step),
            "step_filter_gradient_convolutions": sum(w != 3 for w in step_windows)}   # 3x3 kernels


def load1() -> float:
  return round(os.getloadavg()[0], 2)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--official_sid", default="", help="a checkout of github.com/mingyuanzhou/SiD")
  parser.add_argument("--official_edm", default="", help="a checkout of github.com/NVlabs/edm")
  parser.add_argument("--torch_python", default="", help="python of a virtual environment with torch")
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--torch_omp_passive", action="store_true",
                      help="OMP_WAIT_POLICY=PASSIVE for torch: its OpenMP threads sleep instead of spinning at barriers "
                      "(on a loaded machine spinning threads slow torch down many times)")
  parser.add_argument("--configs", default="D,S")
  parser.add_argument("--measures", default=",".join(MEASURES))
  parser.add_argument("--profile", action="store_true", help="also time " + ", ".join(PROFILE_MEASURES) +
                      " and write the profile table to --profile_md")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="the networks' compute dtype on both sides (official: torch.autocast)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--md", default="", help="write the results table here")
  parser.add_argument("--profile_md", default="", help="write the profile table here (with --profile)")
  parser.add_argument("--json", default="", help="write the raw times here")
  parser.add_argument("--no_facts", action="store_true", help="skip the SiD program facts (one more compile)")
  parser.add_argument("--render", default="", help="only rewrite --md from a --json file of an earlier run")
  parser.add_argument("--recount", action="store_true", help="with --render: recompute the SiD program facts")
  parser.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.render:   # rewrite the table of an earlier run, optionally with its SiD program facts recomputed
    saved = json.load(open(args.render))
    if args.recount:
      saved["facts"] = {name: Library(name).sid_program_facts() for name in saved["results"]}
      with open(args.render, "w") as fh:
        json.dump(saved, fh)
    for key, value in saved.get("args", {}).items():   # the command line of the run that measured
      setattr(args, key, value)
    render(saved["results"], saved["facts"], saved.get("measures", MEASURES), args)
    return
  if args.torch_worker:
    torch_worker(args.official_sid, args.official_edm, args.torch_threads, args.dtype)
    return
  if not (args.official_sid and args.official_edm and args.torch_python):
    parser.error("--official_sid, --official_edm and --torch_python are required (local checkouts and a torch venv).")
  for path, what in ((args.official_sid, "training/sid_loss.py"), (args.official_edm, "generate.py")):
    if not os.path.exists(os.path.join(path, what)):
      parser.error(f"{path} has no {what}: pass a checkout of the official repository.")

  worker = subprocess.Popen([args.torch_python, os.path.abspath(__file__), "--torch_worker",
                             f"--official_sid={args.official_sid}", f"--official_edm={args.official_edm}",
                             f"--torch_threads={args.torch_threads}", f"--dtype={args.dtype}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=args.official_edm,
                            env={**os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.torch_omp_passive else {})})

  def ask(obj):
    worker.stdin.write(json.dumps(obj) + "\n")
    worker.stdin.flush()
    line = worker.stdout.readline()
    if not line:
      raise RuntimeError("the torch worker stopped; run it by hand to see why")
    return json.loads(line)

  measures = [m for m in args.measures.split(",") if m]
  if args.profile:
    measures = list(PROFILE_MEASURES) + [m for m in measures if m not in PROFILE_MEASURES]
  results, facts = {}, {}
  for name in [c for c in args.configs.split(",") if c]:
    torch_params = ask({"op": "setup", "config": name})["params"]
    lib = Library(name, args.dtype, profile=args.profile)
    t0 = time.perf_counter()
    for what in measures:   # warm-up: compile (library), first call (torch)
      lib.run(what)
      if what == "optimizer":   # its first output (committed arrays) is a new input signature: compiled again
        lib.run(what)
      ask({"op": "time", "measure": what})
    warm_s = time.perf_counter() - t0
    load_before = load1()
    times = {what: {"library": [], "official": []} for what in measures}
    for _ in range(args.rounds):
      for what in measures:
        times[what]["library"].append(lib.run(what))
        times[what]["official"].append(ask({"op": "time", "measure": what})["s"])
    results[name] = dict(times=times, load=(load_before, load1()), params=(lib.params, torch_params),
                         warmup_s=round(warm_s, 1))
    if "sid step" in measures and not args.no_facts:
      facts[name] = lib.sid_program_facts()
    print(json.dumps({name: results[name]["load"]}), flush=True)
  ask_quit = {"op": "quit"}
  worker.stdin.write(json.dumps(ask_quit) + "\n")
  worker.stdin.flush()
  worker.wait()

  if args.json:
    keep = ("configs", "rounds", "torch_threads", "torch_omp_passive", "dtype", "profile", "md", "profile_md")
    with open(args.json, "w") as fh:
      json.dump(dict(results=results, facts=facts, measures=measures,
                     args={k: getattr(args, k) for k in keep}), fh)
  render(results, facts, measures, args)


def _ms(values):
  """median, min, max in ms"""
  import numpy as np
  v = 1000 * np.asarray(values)
  return float(np.median(v)), float(v.min()), float(v.max())


def render(results, facts, measures, args):
  import numpy as np
  flags = (f" --configs={args.configs} --rounds={args.rounds}"
           f"{' --torch_omp_passive' if getattr(args, 'torch_omp_passive', False) else ''}"
           f"{' --dtype=' + args.dtype if getattr(args, 'dtype', 'float32') != 'float32' else ''}"
           f"{' --profile' if getattr(args, 'profile', False) else ''}"
           f"{' --md=' + os.path.relpath(args.md, ROOT) if args.md else ''}"
           f"{' --profile_md=' + os.path.relpath(args.profile_md, ROOT) if getattr(args, 'profile_md', '') else ''}")
  command = (f"`.venv/bin/python benchmarks/vs_pytorch.py --official_sid=SID --official_edm=EDM --torch_python=TORCH"
             f"{flags}`")
  dtype = getattr(args, "dtype", "float32")
  where = (f"on {os.cpu_count()} CPU cores (torch with {args.torch_threads} threads, {dtype}; medians of "
           f"{args.rounds} interleaved rounds, [min-max] over the rounds)")
  lines = ["# The library against the official PyTorch code", "", f"Generated by {command} {where}.", "",
           "| config | measure | library ms [min-max] | official ms [min-max] | ratio | params (library / official) "
           "| load 1 min |", "|---|---|---|---|---|---|---|"]
  main_measures = [m for m in measures if m in MEASURES]
  for name, r in results.items():
    for what in main_measures:
      lib, off = _ms(r["times"][what]["library"]), _ms(r["times"][what]["official"])
      lines.append(f"| {name} | {what} | {lib[0]:.0f} [{lib[1]:.0f}-{lib[2]:.0f}] | {off[0]:.0f} [{off[1]:.0f}-"
                   f"{off[2]:.0f}] | {lib[0] / off[0]:.2f} | {r['params'][0]:,} / {r['params'][1]:,} | "
                   f"{r['load'][0]} -> {r['load'][1]} |")
  for name, r in results.items():
    if "one-step" in measures and "heun 35" in measures:
      one = float(np.median(r["times"]["one-step"]["library"]))
      heun = float(np.median(r["times"]["heun 35"]["library"]))
      lines.append("")
      lines.append(f"{name}: library one-step generation is {heun / one:.0f}x faster than Heun NFE 35 on the "
                   f"same network and batch ({1000 * one:.0f} ms against {1000 * heun:.0f} ms).")
  for name, f in facts.items():
    n_f, total, filt = f["forward_convolutions"], f["step_convolutions"], f["step_filter_gradient_convolutions"]
    lines += ["", f"{name}: network passes in the compiled SiD step. The official iteration runs 5 forward and 4 "
              "backward passes (2 of them also to the parameters). One forward pass of this network has "
              f"{n_f} k x k convolutions; the step has {total}: {filt} filter-gradient ones (= {filt / n_f:.2f} "
              f"passes; official 2) and {total - filt} forward or input-gradient ones (= {(total - filt) / n_f:.2f} "
              f"passes; official at most 9, less the first layer's input gradient where the input needs none); "
              f"FLOPs: {f['step_flops'] / 1e9:.2f} G = {f['step_flops'] / f['forward_flops']:.2f} forward passes "
              "(official: 5 forward + 4 input-gradient + 2 filter-gradient, about 11)."]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.md:
    with open(args.md, "w") as fh:
      fh.write(text)
  if all(m in measures for m in PROFILE_MEASURES + ("edm step", "sid step")):
    text = render_profile(results, command, where)
    print(text)
    if getattr(args, "profile_md", ""):
      with open(args.profile_md, "w") as fh:
        fh.write(text)


def render_profile(results, command, where):
  """The profile table: each part on both sides, and the steps less their network passes."""
  lines = ["# Where the time of a step goes: the library against the official PyTorch code", "",
           f"Generated by {command} {where}. The parts are defined in the script's docstring; derived rows are "
           "differences of medians.", "",
           "| config | part | library ms [min-max] | official ms [min-max] | library - official ms | ratio |",
           "|---|---|---|---|---|---|"]
  for name, r in results.items():
    med = {}
    for what in PROFILE_MEASURES + ("edm step", "sid step"):
      lib, off = _ms(r["times"][what]["library"]), _ms(r["times"][what]["official"])
      med[what] = (lib[0], off[0])
      lines.append(f"| {name} | {what} | {lib[0]:.0f} [{lib[1]:.0f}-{lib[2]:.0f}] | {off[0]:.0f} [{off[1]:.0f}-"
                   f"{off[2]:.0f}] | {lib[0] - off[0]:+.0f} | {lib[0] / off[0]:.2f} |")
    side = lambda i: {k: v[i] for k, v in med.items()}
    derived = []
    for i in (0, 1):
      m = side(i)
      sid_net = m["forward"] + 2 * m["grad input"] + 2 * m["grad params"]
      derived.append({
          "edm step - grad params (non-network)": m["edm step"] - m["grad params"],
          "edm step - grad params - optimizer (loss, rest)": m["edm step"] - m["grad params"] - m["optimizer"],
          "sid network passes (forward + 2 grad input + 2 grad params)": sid_net,
          "sid step - network passes (non-network)": m["sid step"] - sid_net,
          "sid step - network passes - 2 optimizer (losses, rest)": m["sid step"] - sid_net - 2 * m["optimizer"],
      })
    for key in derived[0]:
      lib, off = derived[0][key], derived[1][key]
      ratio = f"{lib / off:.2f}" if off > 0 else "-"
      lines.append(f"| {name} | {key} | {lib:.0f} | {off:.0f} | {lib - off:+.0f} | {ratio} |")
    lines.append(f"| {name} | load 1 min | {r['load'][0]} -> {r['load'][1]} | | | |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
