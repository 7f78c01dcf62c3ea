"""A run's train step compiled for a TPU pod slice, on a machine without a TPU.

With libtpu installed (`pip install -e '.[tpu]'`), JAX describes the devices of any TPU slice
(`jax.experimental.topologies.get_topology_desc`, e.g. 'v5e:4x4' = 16 chips on 4 hosts) and compiles for
them. `compile_step` builds the mesh from the run's own `mesh` config, the TrainState, teacher and batch as
shapes with the library's own sharding rules (sharding.ShardedObjective), compiles the real train step, and
reads what the compiled program says about one chip:

    report = topology.compile_step(config, spec, "v5p:4x4x4")
    report.peak_bytes, report.fits, report.flops, report.collective_bytes, report.roofline_s

Memory is XLA's own accounting of the per-chip program (arguments, temporaries, outputs; the donated state
aliases its outputs). FLOPs and HBM bytes are XLA's cost analysis of that program; it counts a loop body once,
so with `train.microbatches` = k they are multiplied by k (nearly all of a step's work is inside the
micro-batch loops; checked on the edm smoke step: k = 2 gives 2 x 0.5004 of the k = 1 FLOPs). Collective
bytes are summed from the compiled HLO (the result size of every all-gather, all-reduce, reduce-scatter,
all-to-all and collective-permute, per chip, scaled by k like FLOPs).

The roofline is a lower bound on the step time: the largest of FLOPs / peak FLOP/s, HBM bytes / HBM
bandwidth and collective bytes / ICI bandwidth, with the chips' published figures (CHIPS). TPUs multiply
float32 matrices at default precision in bfloat16 passes, so the bf16 peak applies to float32 networks too.
"""
import dataclasses
import importlib.util
import math
import re
import time
from typing import Any, Dict, Optional

import jax
import ml_collections

from gendistill import objectives
from gendistill import sharding
from gendistill import teachers


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (Cloud TPU system architecture pages)."""
  name: str
  peak_flops: float        # bf16 FLOP/s
  hbm_bytes: float         # capacity
  hbm_bandwidth: float     # bytes/s
  ici_bandwidth: float     # bidirectional inter-chip interconnect, bytes/s
  source: str


CHIPS = {
    "v5e": Chip("TPU v5e", 197e12, 16 * 2**30, 819e9, 400e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 459e12, 95 * 2**30, 2765e9, 1200e9, "https://docs.cloud.google.com/tpu/docs/v5p-training"),
    "v6e": Chip("TPU v6e", 918e12, 32 * 2**30, 1638e9, 800e9, "https://docs.cloud.google.com/tpu/docs/v6e"),
}

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def chip(topology: str) -> Chip:
  """'v5p:4x4x4' -> CHIPS['v5p']."""
  kind = topology.split(":")[0]
  if kind not in CHIPS:
    raise ValueError(f"Unknown TPU kind {kind!r} in topology {topology!r}; known: {sorted(CHIPS)}.")
  return CHIPS[kind]


def devices(topology: str):
  """The devices of a TPU slice, e.g. 'v5e:4x4', 'v5p:4x4x4', 'v6e:8x8' (chips; no TPU needed)."""
  if not has_libtpu():
    raise RuntimeError("Compiling for a TPU topology needs libtpu: pip install -e '.[tpu]' (jax's pinned "
                       "libtpu; no TPU is needed).")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  except jax.errors.JaxRuntimeError as e:
    if "lockfile" in str(e):
      raise RuntimeError("Another process on this machine holds libtpu (its lock file). To compile for a topology "
                         "beside it, set ALLOW_MULTIPLE_LIBTPU_LOAD=1 before the first TPU call (never on a TPU VM "
                         "whose chips another process is using).") from e
    raise


# 'name = SHAPE opcode(': SHAPE an array or a tuple (which may hold '/*index=5*/' comments).
_INSTRUCTION = re.compile(r"=\s*(\(.*?\)|[a-z0-9]+\[[0-9,]*\]\S*)\s+(" + "|".join(COLLECTIVES) +
                          r")(-start)?\(")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64|c64|c128|f8e4m3fn|f8e5m2)"
                    r"\[([0-9,]*)\]")
_BITS = dict(pred=8, s8=8, u8=8, f8e4m3fn=8, f8e5m2=8, s16=16, u16=16, bf16=16, f16=16, s32=32, u32=32, f32=32,
             s64=64, u64=64, f64=64, c64=64, c128=128)


def collective_bytes(hlo_text: str) -> Dict[str, int]:
  """Bytes of the results of every collective in a compiled (per-device) HLO module, by kind. A combined
  collective (tuple result) counts all its arrays; an async pair counts once, at its -start, whose tuple holds
  the operands and then the results (all-gather, collective-permute): the results count."""
  out = {k: 0 for k in COLLECTIVES}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.search(line)
    if not m:
      continue
    sizes = [math.prod(int(d) for d in dims.split(",")) * _BITS[t] // 8
             for t, dims in _ARRAY.findall(m.group(1)) if dims]
    if m.group(3) and m.group(2) != "all-reduce":
      sizes = sizes[len(sizes) // 2:]
    out[m.group(2)] += sum(sizes)
  return out


@dataclasses.dataclass
class StepReport:
  """What the compiled step of one run needs of each chip of one slice."""
  topology: str
  chips: int
  hosts: int
  mesh: Dict[str, int]
  batch: int
  microbatches: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  code_bytes: int
  flops: float                 # per chip per step
  hbm_bytes: float             # per chip per step (XLA's 'bytes accessed')
  collectives: Dict[str, int]  # per chip per step, by kind
  compile_s: float
  state_bytes: int             # the TrainState's share of one chip
  params: int

  @property
  def chip(self) -> Chip:
    return chip(self.topology)

  @property
  def peak_bytes(self) -> int:
    """Arguments + temporaries + outputs not written into donated arguments."""
    return self.argument_bytes + self.temp_bytes + max(self.output_bytes - self.alias_bytes, 0)

  @property
  def fits(self) -> bool:
    return self.peak_bytes + self.code_bytes <= self.chip.hbm_bytes

  @property
  def collective_bytes(self) -> int:
    return sum(self.collectives.values())

  @property
  def times(self) -> Dict[str, float]:
    c = self.chip
    return dict(compute=self.flops / c.peak_flops, hbm=self.hbm_bytes / c.hbm_bandwidth,
                ici=self.collective_bytes / c.ici_bandwidth)

  @property
  def roofline_s(self) -> float:
    """A lower bound on the step time (seconds)."""
    return max(self.times.values())

  @property
  def images_per_s(self) -> float:
    return self.batch / self.roofline_s

  def row(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(peak_bytes=self.peak_bytes, fits=self.fits, collective_bytes=self.collective_bytes,
             roofline_s=self.roofline_s, images_per_s=self.images_per_s,
             flops_per_image=self.flops * self.chips / self.batch, **{f"t_{k}": v for k, v in self.times.items()})
    return d


def lower_step(config: ml_collections.ConfigDict, spec, topology: str, teacher: Any = "auto"):
  """(sharded objective, lowered train step) of a run of `config` on the slice `topology`, from shapes alone.
  teacher: shapes of the teacher, None, or 'auto' (teachers.abstract_for_run: the run's own teacher as shapes)."""
  if isinstance(teacher, str) and teacher == "auto":
    teacher = teachers.abstract_for_run(config, spec)
  mesh = sharding.make_mesh(config.mesh, devices(topology))
  objective = objectives.build(config, spec)
  with jax.set_mesh(mesh):
    sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh)
    sharding.check_accumulation(sharded, config.train.microbatches, teacher)
    return sharded, sharded.lower_step(config.data.batch_size)


# XLA's lowest execution-time optimisation effort: paper-scale steps compile in minutes instead of hours on a small
# CPU, with the same FLOPs and collectives and temporaries within a few percent (benchmarks/pod_plan.md); XLA's
# count of HBM bytes comes out lower, so a roofline from it is optimistic.
QUICK = {"exec_time_optimization_effort": -1.0}


def compile_step(config: ml_collections.ConfigDict, spec, topology: str, teacher: Any = "auto",
                 compiler_options: Optional[dict] = None) -> StepReport:
  """Compiles the train step of a run of `config` (global batch config.data.batch_size) for the TPU slice
  `topology` and reports its per-chip memory, work and traffic (see the module docstring). `compiler_options`
  go to `Lowered.compile` (QUICK for a fast compile)."""
  t0 = time.time()
  sharded, lowered = lower_step(config, spec, topology, teacher)
  with jax.set_mesh(sharded.mesh):
    compiled = lowered.compile(compiler_options)
  compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  k = max(int(config.train.microbatches), 1)
  devs = sharded.mesh.devices.flat
  return StepReport(
      topology=topology, chips=sharded.mesh.size, hosts=len({d.process_index for d in devs}),
      mesh=dict(sharded.mesh.shape), batch=int(config.data.batch_size), microbatches=k,
      argument_bytes=int(mem.argument_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      output_bytes=int(mem.output_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
      code_bytes=int(mem.generated_code_size_in_bytes),
      flops=k * float(cost.get("flops", 0.0)), hbm_bytes=k * float(cost.get("bytes accessed", 0.0)),
      collectives={n: k * v for n, v in collective_bytes(compiled.as_text()).items()}, compile_s=compile_s,
      state_bytes=sharding.bytes_per_device(sharded.abstract_state),
      params=int(sum(math.prod(x.shape) for x in jax.tree.leaves(sharded.abstract_state.params))))


__all__ = ["Chip", "CHIPS", "has_libtpu", "chip", "devices", "collective_bytes", "StepReport",
           "lower_step", "compile_step", "QUICK"]
