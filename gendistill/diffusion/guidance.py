"""Classifier-free guidance, the one implementation: D_w = D(x; empty) + w (D(x; c) - D(x; empty)).

The unconditional input is the all-zero one-hot label; both calls run as one batch of 2N.
"""
import jax.numpy as jnp


def guided_apply(apply_fn, params, x, sigma, labels, scale=1.0, **kwargs):
  """Guided output of any network-contract apply function; w = 1 (or labels None) is one plain call.

  `scale` may be a float or a tuple of floats: a tuple returns one guided output per scale from the same two
  network evaluations (SiD-LSG's kappa2 and kappa3).
  """
  scales = scale if isinstance(scale, tuple) else (scale,)
  if labels is None or all(s == 1.0 for s in scales):
    out = apply_fn(params, x, sigma, labels, **kwargs)
    return tuple(out for _ in scales) if isinstance(scale, tuple) else out
  n = x.shape[0]
  sigma = jnp.broadcast_to(jnp.asarray(sigma), (n,))
  both = apply_fn(params, jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma]),
                  jnp.concatenate([labels, jnp.zeros_like(labels)]), **kwargs)
  cond, uncond = both[:n], both[n:]
  outs = tuple(uncond + s * (cond - uncond) for s in scales)
  return outs if isinstance(scale, tuple) else outs[0]


def bind_denoiser(apply_fn, params, labels=None, guidance=1.0):
  """A sampler's `denoise_fn(x, sigma)` from a network apply function, one-hot labels and a CFG scale."""
  return lambda x, sigma: guided_apply(apply_fn, params, x, sigma, labels, guidance)


__all__ = ["guided_apply", "bind_denoiser"]
