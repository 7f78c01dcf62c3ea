"""The JVP objectives (sct, scd, meanflow) compile for a TPU slice from shapes alone, with remat and bf16 compute:
jax.jvp through the whole (rematerialised, bfloat16) network inside the sharded train step, on a 2x2 v5e slice
with FSDP. Needs libtpu (`pip install -e '.[tpu]'`, which `make test` installs); skipped without it."""
import importlib
import os

import jax
import pytest

from gendistill import topology
from gendistill.data import DataSpec

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # as tests/test_tpu_compile.py
needs_libtpu = pytest.mark.skipif(not topology.has_libtpu(), reason="needs libtpu: pip install -e '.[tpu]'")

BATCH = 8


def _compile(name, arg, spec, remat, dtype):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.data.batch_size = BATCH
  config.network.update(remat=remat, dtype=dtype)
  config.mesh.update(data=2, fsdp=-1, fsdp_min_size=256)
  if config.teacher.source == "analytic":   # as shapes: a network teacher of the same architecture
    config.teacher.source = "random"

  sharded, lowered = topology.lower_step(config, spec, "v5e:2x2")
  hlo = lowered.as_text()
  assert ("bf16" in hlo) == (dtype == "bfloat16")
  assert "optimization_barrier" in hlo    # remat's mark in the lowered step
  with jax.set_mesh(sharded.mesh):
    compiled = lowered.compile(topology.QUICK)    # lowering and sharding are what is tested, not XLA's effort
  assert dict(sharded.mesh.shape) == {"data": 2, "fsdp": 2}
  cost = compiled.cost_analysis()
  assert (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] > 0
  # Parameters are sharded over fsdp, so the step gathers them (for the JVP's forward-mode pass too).
  assert topology.collective_bytes(compiled.as_text())["all-gather"] > 0


@needs_libtpu
@pytest.mark.parametrize("name,remat,dtype", [("sct", "full", "bfloat16"), ("scd", "dots", "float32"),
                                              ("meanflow", "full", "bfloat16")])
def test_jvp_step_compiles_for_a_tpu_slice(name, remat, dtype):
  _compile(name, "toy2d,smoke", DataSpec("x", (2,), 0), remat, dtype)


@needs_libtpu
@pytest.mark.slow
def test_jvp_step_of_a_unet_compiles_for_a_tpu_slice():
  """The same through the digits UNet (convolutions, attention, group norms), for sCT only (meanflow's JVP goes
  through the same layers): ~80 s on a loaded 2-core CPU."""
  _compile("sct", "digits,smoke", DataSpec("image", (16, 16, 1), 10), "full", "bfloat16")
