"""A SiLU MLP for toy vectors (e.g. 2-D mixtures): the raw backbone F for [N, data_dim] data.

Noise labels are embedded as in the UNet (EDM's positional embedding with endpoint=True, halves swapped to
[sin, cos]), mapped by two SiLU dense layers, and added, through a per-layer projection, to every hidden
layer's pre-activation. Class labels (one-hot, scaled by sqrt(label_dim)) are added to the embedding.
The output layer starts near zero (xavier_uniform * 1e-5), as the UNet's last convolution.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gendistill.nets import layers

Dtype = Any


class MLP(nn.Module):
  """__call__(x [N, data_dim], noise_labels [N], class_labels [N, label_dim] or None, train, augment_labels
  (ignored), return_features) -> [N, data_dim] float32, or (output, features [N, hidden]) with features the
  last hidden activation. Dropout (after every hidden activation) and label dropout use the 'dropout' rng."""
  data_dim: int
  label_dim: int = 0
  hidden: int = 256
  depth: int = 4
  emb_dim: int = 64
  dropout: float = 0.0
  label_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, train: bool = False, augment_labels=None,
               return_features: bool = False):
    del augment_labels
    n = x.shape[0]
    dense = lambda features, name, dtype=self.dtype, init_weight=1.0: nn.Dense(  # pylint: disable=g-long-lambda
        features, kernel_init=layers.xavier_uniform(init_weight), dtype=dtype, param_dtype=jnp.float32, name=name)

    emb = layers.swap_halves(layers.positional_embedding(jnp.reshape(noise_labels, (n,)), self.emb_dim,
                                                         endpoint=True))
    if self.label_dim:
      labels = (jnp.zeros((n, self.label_dim), jnp.float32) if class_labels is None
                else jnp.asarray(class_labels, jnp.float32).reshape(n, self.label_dim))
      if train and self.label_dropout:
        keep = jax.random.uniform(self.make_rng("dropout"), (n, 1)) >= self.label_dropout
        labels = labels * keep.astype(labels.dtype)
      emb = emb + dense(self.emb_dim, "map_label", jnp.float32)(labels * np.sqrt(self.label_dim))
    emb = nn.silu(dense(self.hidden, "map_layer0", jnp.float32)(emb))
    emb = nn.silu(dense(self.hidden, "map_layer1", jnp.float32)(emb))

    h = x.astype(self.dtype)
    for i in range(self.depth):
      h = nn.silu(dense(self.hidden, f"layer{i}")(h) + dense(self.hidden, f"emb{i}")(emb).astype(self.dtype))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    out = dense(self.data_dim, "out", init_weight=1e-5)(h).astype(jnp.float32)
    return (out, h) if return_features else out
