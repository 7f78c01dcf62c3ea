"""Device mesh, sharding rules, and an objective's init/step/sample jitted with their shardings.

One mesh with two axes: `data` (the batch only) and `fsdp` (the batch, and the large arrays of the TrainState
and of the teacher). The batch is split over both axes, so every device holds global_batch / num_devices
examples. Gradients are taken over the global batch inside one jitted step: no pmap, no pmean.

Rules are declared once (config `mesh.rules`), as (regex, spec) pairs matched with `re.search` against the
path of every array, e.g. `params/generator/params/backbone/enc/32x32_conv/kernel`. The same path appears under
`opt_state/generator/<chain index>/mu/...`, `ema/generator/...` and `teacher/params/...`, so one rule covers a
parameter, its optimizer moments and its EMA alike. The first matching rule wins; a spec is
  'fsdp'        the default rule below, without the size threshold;
  'replicated'  a full copy on every device;
  a tuple       one entry per dimension: None, an axis name, or a tuple of axis names (a PartitionSpec).
Arrays that match no rule take the default rule: shard the largest dimension divisible by the `fsdp` axis size
over `fsdp` (the last such dimension on a tie, i.e. output features) when the array has at least
`mesh.fsdp_min_size` elements; replicate it otherwise (biases, norms, step counters, keys).

    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
      sharded = sharding.ShardedObjective(objective, spec, mesh, teacher, config.mesh)
      teacher = sharded.put_teacher(teacher)
      state = sharded.init(jax.random.key(0), teacher)          # born sharded: jit(init, out_shardings=...)
      state, metrics = sharded.train_step(state, sharded.put_batch(local_batch), teacher)  # donates state

Multi-host: every process runs the same program; `put_batch` assembles the global batch from each process's
share (`jax.make_array_from_process_local_data`); host values that are the same on every process (seeds,
labels, a teacher read from disk) are placed with `put_replicated`/`put_tree`.

Modules, one job each: `mesh` (the mesh and the rules), `placement` (host values onto the mesh and back),
`memory` (bytes per device), `accumulation` (gradient accumulation over micro-batches, config
`train.microbatches`; an objective declares support with `Objective.accumulates_gradients`), `sharded`
(ShardedObjective). Everything is re-exported here.
"""
from gendistill.sharding.accumulation import accumulate_gradients, constrain_batch, split_microbatches
from gendistill.sharding.memory import bytes_per_device, total_bytes
from gendistill.sharding.mesh import (AXES, BATCH_AXES, DATA, DEFAULT_FSDP_MIN_SIZE, FSDP, batch_sharding,
                                      fsdp_spec, make_mesh, mesh_config, mesh_shape, num_batch_shards, path_str,
                                      replicated, resolve_spec, spec_for, tree_shardings, with_shardings)
from gendistill.sharding.placement import put_batch, put_replicated, put_tree, to_host
from gendistill.sharding.sharded import ShardedObjective, check_accumulation

__all__ = ["DATA", "FSDP", "AXES", "BATCH_AXES", "mesh_config", "make_mesh", "mesh_shape", "fsdp_spec",
           "spec_for", "tree_shardings", "batch_sharding", "replicated", "put_batch", "put_tree",
           "put_replicated", "to_host", "bytes_per_device", "total_bytes", "accumulate_gradients",
           "split_microbatches", "ShardedObjective", "check_accumulation"]
