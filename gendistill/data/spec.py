"""What a dataset's batches look like, for modules that build networks and states from it."""
import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DataSpec:
  key: str  # 'image' (NHWC in [-1, 1]) or 'x' (toy vectors)
  shape: tuple  # per-sample shape, e.g. (16, 16, 1) or (2,)
  num_classes: int  # 0 if unconditional (no 'label' key in batches)

  @property
  def conditional(self) -> bool:
    return self.num_classes > 0


def abstract_batch(spec: DataSpec, batch_size: int = 2) -> dict:
  """A batch's structure as jax.ShapeDtypeStructs (shape inference and lowering without arrays)."""
  batch = {spec.key: jax.ShapeDtypeStruct((batch_size,) + tuple(spec.shape), jnp.float32)}
  if spec.num_classes:
    batch["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  return batch
