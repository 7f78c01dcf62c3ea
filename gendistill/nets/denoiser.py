"""The network contract: a preconditioned denoiser D(x; sigma, labels) around any raw backbone F.

`Denoiser.apply(params, x, sigma, labels, train=..., rngs=...) -> D(x; sigma)`. Teacher, fake score, generator
and consistency student all use this one calling convention. Objectives receive their networks as `Network`s
(init and apply functions), never modules or config sections.
"""
import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from gendistill.diffusion import precond
from gendistill.diffusion.noise import expand


class Denoiser(nn.Module):
  backbone: nn.Module
  preconditioning: str = "edm"
  sigma_data: float = 0.5

  def __call__(self, x, sigma, labels=None, train: bool = False, return_features: bool = False):
    """x: [N, ...]; sigma: scalar or [N]; labels: [N, num_classes] one-hot (zeros = unconditional) or None."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    c = precond.coefficients(self.preconditioning, sigma, self.sigma_data)
    out = self.backbone(expand(c.c_in, x) * x, c.c_noise, labels, train=train, return_features=return_features)
    raw, features = out if return_features else (out, None)
    d = expand(c.c_skip, x) * x + expand(c.c_out, x) * raw.astype(jnp.float32)
    return (d, features) if return_features else d


def one_hot_labels(labels: Any, num_classes: int, drop=None):
  """Integer labels -> one-hot float vectors; `drop` (bool [N]) zeroes rows (the unconditional input)."""
  if num_classes == 0 or labels is None:
    return None
  onehot = jnp.eye(num_classes, dtype=jnp.float32)[labels]
  if drop is not None:
    onehot = jnp.where(drop[:, None], 0.0, onehot)
  return onehot


@dataclasses.dataclass(frozen=True)
class Network:
  """One role's network, as an objective receives it.

  init(rng, x, sigma, labels) -> params
  apply(params, x, sigma, labels=None, train=False, rngs=None, return_features=False) -> D(x; sigma), or
      (D, features) with return_features (SiDA's and DMD2's discriminators read the bottleneck features)
  sigma_data: the data standard deviation its preconditioning assumes (EDM weighting of the losses).
  apply_backbone(params, x_in, c_noise, labels, train=False, rngs=None) -> the raw network F on the same
      parameters, for objectives that put a denoiser's backbone under their own coefficients (consistency
      models); None when the network has no separate backbone.
  Critics and heads use the same struct with their own call signatures (init/apply of their Flax module).
  """
  init: Callable
  apply: Callable
  sigma_data: float = 0.5
  apply_backbone: Optional[Callable] = None

  @classmethod
  def from_module(cls, module: nn.Module, sigma_data: Optional[float] = None) -> "Network":
    """The network-contract functions of a Flax module called as module(x, sigma, labels, train=...[,
    return_features=True]); a `Denoiser` also gives its backbone and its sigma_data."""
    def apply(params, x, sigma, labels=None, train=False, rngs=None, return_features=False):
      extra = dict(return_features=True) if return_features else {}
      return module.apply(params, x, sigma, labels, train=train, rngs=rngs, **extra)

    def init(rng, x, sigma, labels=None):
      return module.init(rng, x, sigma, labels)

    backbone = None
    if isinstance(module, Denoiser):
      def backbone(params, x_in, c_noise, labels=None, train=False, rngs=None):
        call = lambda m, *args: m.backbone(*args, train=train)
        return module.apply(params, x_in, c_noise, labels, method=call, rngs=rngs)
      sigma_data = module.sigma_data if sigma_data is None else sigma_data
    return cls(init=init, apply=apply, sigma_data=0.5 if sigma_data is None else sigma_data,
               apply_backbone=backbone)

  @classmethod
  def from_functions(cls, init: Callable, apply: Callable, sigma_data: float = 0.5) -> "Network":
    """A network from a user's init/apply pair (e.g. a closed-form denoiser with init returning its constants)."""
    return cls(init=init, apply=apply, sigma_data=sigma_data)
