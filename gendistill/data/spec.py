"""What a dataset's batches look like, for modules that build networks and states from it."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class DataSpec:
  key: str  # 'image' (NHWC in [-1, 1]) or 'x' (toy vectors)
  shape: tuple  # per-sample shape, e.g. (16, 16, 1) or (2,)
  num_classes: int  # 0 if unconditional (no 'label' key in batches)

  @property
  def conditional(self) -> bool:
    return self.num_classes > 0
