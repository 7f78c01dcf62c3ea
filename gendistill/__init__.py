"""gendistill: distil diffusion models into one-step and few-step generators (JAX/Flax)."""
from gendistill import _platform

_platform.apply_cpu_flags()

__version__ = "0.1.0"
