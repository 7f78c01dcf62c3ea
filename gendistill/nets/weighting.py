"""A learned scalar weighting of the time input: sCM's adaptive loss weighting w_phi(t) (Lu & Song 2024).

`AdaptiveWeight()(c) -> w`: c [N] (the network's time input), w [N]. Its own role network (kind 'time_weighting'
of gendistill.nets.build_networks), trained by the objective on the same loss as the student.
"""
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class AdaptiveWeight(nn.Module):
  """Fixed Fourier features sqrt2 cos(2 pi (f c + p)) of c (f ~ N(0, 1), p ~ U(0, 1), seed 0) and one linear
  layer (zero-initialised: w = 0 at the start). [N] -> [N]."""
  num_features: int = 128

  @nn.compact
  def __call__(self, c):
    r = np.random.default_rng(0)
    freqs = jnp.asarray(r.standard_normal(self.num_features), jnp.float32)
    phases = jnp.asarray(r.uniform(size=self.num_features), jnp.float32)
    feats = math.sqrt(2.0) * jnp.cos(2 * np.pi * (c[:, None] * freqs + phases))
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(feats)[:, 0]
