"""Command line: python -m gendistill.main --config=configs/edm.py:digits --workdir=DIR [--config.key=value].

Multi-host: pass --distributed (or set the usual JAX coordinator environment variables) and every process
runs the same command; jax.distributed.initialize() picks up the cluster.

Exit status: 0 trained and evaluated; 1 a clear error (bad config or file, busy workdir, divergence: the
message says which and what to do); 143 stopped by SIGTERM after saving a checkpoint (relaunch to resume).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import gendistill  # noqa: F401  (sets the CPU flags before jax starts)
import jax

from gendistill import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/edm.py:digits", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, %d local devices", jax.process_index(), jax.process_count(),
               jax.local_device_count())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.Preempted as e:
    logging.warning("%s", e)
    sys.exit(train.PREEMPTED_EXIT_CODE)
  except train.CLEAR_ERRORS as e:   # the message says it all; no traceback
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
