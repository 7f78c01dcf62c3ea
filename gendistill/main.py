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


def parse_flags(argv):
  """absl's flag parsing, with the config file's own errors (a missing file, an unknown preset flag or dataset,
  a misspelt --config.key) as one line naming the cause instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:   # ml_collections puts the config file's traceback inside the message: keep its ends
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    short = lines[0] + (" " + lines[-1] if any(line.startswith("Traceback") for line in lines) else
                        "".join(" " + line for line in lines[1:]))
    sys.exit(f"error: {short}\nPass --helpshort or --helpfull to see help on flags.")
  except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    message = str(e.args[0] if isinstance(e, (AttributeError, KeyError)) and e.args else e)
    key = message.splitlines()[0].strip("'\" ") if isinstance(e, (AttributeError, KeyError)) else ""
    culprits = [a.split("=")[0] for a in argv[1:] if key and a.startswith("--config.") and key in a.split("=")[0]]
    where = f" (unknown key in {', '.join(culprits)}; keys are declared in configs/base.py)" if culprits else ""
    sys.exit(f"error: bad --config: {type(e).__name__}: {message}{where}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    config = _CONFIG.value     # a config file that failed to load raises OSError on first use
    config.keys()
  except OSError as e:
    sys.exit("error: bad --config: " + " ".join(line.strip() for line in str(e).splitlines() if line.strip()))
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, %d local devices", jax.process_index(), jax.process_count(),
               jax.local_device_count())
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted as e:
    logging.warning("%s", e)
    sys.exit(train.PREEMPTED_EXIT_CODE)
  except train.CLEAR_ERRORS as e:   # the message says it all; no traceback
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
