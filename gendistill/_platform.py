"""CPU-only XLA flags, set in one place.

jaxlib 0.10 routes convolutions on CPU to YNNPACK, whose convolution backward is several times slower than
XLA's own; restricting YNNPACK to dots roughly halves a UNet training step on CPU (measured on a 2-core CPU: a 2.07M-parameter UNet training step went from ~2.3 s to ~1.1 s).
The flag is read by the CPU backend only, so it changes nothing on GPU/TPU, and it never changes results.
It only takes effect if set before jax initialises its backends, i.e. before the first computation.
"""
import os

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)

# Compiler options of the programs jitted on a mesh of CPU devices (sharding.ShardedObjective: init, train step,
# sampling), passed per program so that GPU/TPU programs never see them. Empty: XLA's defaults. Measured for the
# digits SiD step (benchmarks/compile_time.md, --opt_level): LLVM -O0 compiles in about half the time but steps
# ~9x slower; -O1 against -O2 was inconclusive on the loaded 2-core machine (105 vs 159 s, then 110 vs 104 s).
CPU_COMPILER_OPTIONS = {}


def apply_cpu_flags() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in CPU_XLA_FLAGS:
    name = flag.split("=")[0]
    if name not in flags:
      flags = (flags + " " + flag).strip()
  os.environ["XLA_FLAGS"] = flags


def compiler_options(mesh):
  """CPU_COMPILER_OPTIONS for a mesh of CPU devices, else None (jax.jit's default)."""
  devices = getattr(mesh, "devices", None)   # an AbstractMesh has none: no options
  if CPU_COMPILER_OPTIONS and devices is not None and all(d.platform == "cpu" for d in devices.flat):
    return dict(CPU_COMPILER_OPTIONS)
  return None
