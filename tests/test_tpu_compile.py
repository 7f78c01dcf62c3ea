"""The train step compiles for a multi-host TPU slice (v5e:4x4: 16 chips on 4 hosts) from shapes alone, with the
library's mesh and sharding rules; the compiled per-chip program takes and returns the TrainState in the rules'
shardings (no chip holds a whole replica), a 1/16 share of the batch, and writes the new state into the donated
one.

Needs libtpu (`pip install -e '.[tpu]'`, which `make test` installs); skipped without it. No TPU is used.
"""
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import edm as edm_config
from gendistill import sharding
from gendistill import topology
from gendistill.data import DataSpec

# libtpu lets one process per machine load it unless this is set; compiling for a topology touches no TPU, so
# another process holding it (a second test run, a pod_plan compile) must not fail this test.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
needs_libtpu = pytest.mark.skipif(not topology.has_libtpu(), reason="needs libtpu: pip install -e '.[tpu]'")

TOPOLOGY = "v5e:4x4"
BATCH = 32


@needs_libtpu
def test_edm_step_compiles_for_a_multi_host_slice_with_fsdp():
  config = edm_config.get_config("digits,smoke")
  config.data.batch_size = BATCH
  # Two resolutions (smoke has one): enough arrays above fsdp_min_size for the memory accounting below.
  config.network.update(channel_mult=(1, 2), attn_resolutions=(8,))
  config.mesh.update(data=2, fsdp=-1, fsdp_min_size=1024)
  spec = DataSpec("image", (16, 16, 1), 10)

  sharded, lowered = topology.lower_step(config, spec, TOPOLOGY, teacher=None)
  assert dict(sharded.mesh.shape) == {"data": 2, "fsdp": 8}
  assert len({d.process_index for d in sharded.mesh.devices.flat}) == 4      # multi-host: 4 processes
  with jax.set_mesh(sharded.mesh):
    compiled = lowered.compile(topology.QUICK)    # lowering and sharding are what is tested, not XLA's effort

  # The compiled program takes the state and batch with the library's shardings, and returns the state in them.
  (state_in, batch_in, _), _ = compiled.input_shardings
  state_out, _ = compiled.output_shardings
  rules = jax.tree.leaves(sharded.state_shardings)
  for got_in, got_out, want in zip(jax.tree.leaves(state_in), jax.tree.leaves(state_out), rules):
    assert got_in.is_equivalent_to(want, 4) and got_out.is_equivalent_to(want, 4), (got_in, got_out, want)
  assert batch_in[spec.key].shard_shape((BATCH, 16, 16, 1)) == (BATCH // 16, 16, 16, 1)

  # No chip holds a whole TrainState: every large array is split over fsdp, and XLA's own accounting of the TPU
  # program agrees (its arguments, state and batch shards, stay below one replica even though TPU tiles pad
  # the small shards of this tiny network), and the new state is written into the donated buffers.
  abstract = sharded.abstract_state
  mem = compiled.memory_analysis()
  total = sharding.total_bytes(abstract)
  assert mem.argument_size_in_bytes < 0.85 * total, (mem.argument_size_in_bytes, total)
  assert mem.alias_size_in_bytes >= 0.9 * sharding.bytes_per_device(abstract)
  large = [s for x, s in zip(jax.tree.leaves(abstract), rules) if math.prod(x.shape) >= 1024]
  assert large and all(s.spec != P() for s in large), "large TrainState arrays must be sharded over fsdp"

  # FSDP gathers weights and reduces gradients across chips.
  traffic = topology.collective_bytes(compiled.as_text())
  assert traffic["all-gather"] > 0 and traffic["all-reduce"] + traffic["reduce-scatter"] > 0, traffic
  cost = compiled.cost_analysis()
  assert cost["flops"] > 0


def test_collective_bytes_reads_sync_and_async_collectives():
  text = "\n".join([
      "  %all-gather.1 = bf16[3,3,32,16]{3,1,0,2:T(4,128)(2,1)} all-gather(%p), channel_id=1, dimensions={2}",
      "  %ar = f32[32,128]{0,1:T(8,128)} all-reduce(%x), channel_id=2, to_apply=%add",
      "  %cp = (f32[32,16]{0,1}, f32[32,16]{0,1}, u32[], u32[]) collective-permute-start(%f), channel_id=3",
      "  %cpd = f32[32,16]{0,1} collective-permute-done(%cp)",
      "  %ags = (f32[4]{0}, f32[64]{0}) all-gather-start(%y), dimensions={0}",
      "  %agd = f32[64]{0} all-gather-done(%ags)",
      "  %fusion = f32[8]{0} fusion(%all-gather.1), kind=kLoop",
      "  %ar.2 = (f32[16]{0}, f32[3,3]{1,0}, f32[2]{0}, f32[2]{0}, f32[2]{0}, /*index=5*/f32[1000]{0}) all-reduce(%a,"
      " %b, %c, %d, %e, %f), channel_id=4, replica_groups=[1,16]<=[16], to_apply=%add",
  ])
  got = topology.collective_bytes(text)
  assert got == {"all-gather": 3 * 3 * 32 * 16 * 2 + 64 * 4, "all-reduce": 32 * 128 * 4 + (16 + 9 + 2 + 2 + 2 + 1000) * 4, "reduce-scatter": 0,
                 "all-to-all": 0, "collective-permute": 32 * 16 * 4}
  assert np.isclose(topology.chip("v5p:4x4x4").peak_flops, 459e12)
  with pytest.raises(ValueError, match="Unknown TPU kind"):
    topology.chip("v9z:2x2")
