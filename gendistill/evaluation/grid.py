"""Sample grids (PNG) for image datasets and scatter plots for 2-D (toy2d) samples.

Images in [-1, 1] are quantised as EDM does before saving: uint8(clip(x * 127.5 + 128, 0, 255)) (the cast
truncates, so this rounds x * 127.5 + 127.5 to nearest). Tiny images (the 16x16 digits) are enlarged by an
integer nearest-neighbour factor so that the PNG is viewable; `scale=1` keeps the pixels as they are. Tiles are
separated by a white border (by default 1/32 of a tile, at least one pixel), so that neighbouring samples do
not run into each other.
"""
import io
import math

import numpy as np

from gendistill import paths

# Points of a toy scatter plot (samples, and data drawn under them): enough to show each mode's shape.
SCATTER_POINTS = 2000
_AUTO_MIN_TILE = 64  # with scale=None, tiles smaller than this many pixels are enlarged by an integer factor


def to_uint8(images):
  """[-1, 1] floats -> uint8, as EDM: clip(x * 127.5 + 128, 0, 255) then truncation."""
  return np.clip(np.asarray(images, dtype=np.float32) * 127.5 + 128.0, 0, 255).astype(np.uint8)


def auto_padding(tile_size: int) -> int:
  """Pixels between tiles of `tile_size` (after enlargement): 2 for 64-pixel tiles, at least 1."""
  return max(1, round(tile_size / 32))


def make_image_grid(images, ncols=None, scale=None, padding=None, pad_value=255):
  """images [N, H, W, C] (C = 1 or 3) or [N, H, W] in [-1, 1] -> uint8 grid [rows*H', cols*W', C].

  Args:
    ncols: tiles per row; default ceil(sqrt(N)). Unused slots of the last row are black.
    scale: integer nearest-neighbour enlargement of every tile; None: the smallest factor that makes tiles at
      least 64 pixels on their shorter side (1 for images that are already that large).
    padding: pixels between tiles (and around the grid), filled with `pad_value` (uint8); None: auto_padding.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] < 1:
    raise ValueError(f"images must be [N, H, W, C] with N >= 1 and C in (1, 3), got shape {images.shape}")
  n, h, w, c = images.shape
  if scale is None:
    scale = max(1, math.ceil(_AUTO_MIN_TILE / min(h, w)))
  scale = int(scale)
  if scale < 1:
    raise ValueError(f"scale must be a positive integer, got {scale}")
  tiles = to_uint8(images)
  if scale > 1:
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  padding = auto_padding(min(h, w)) if padding is None else int(padding)
  ncols = int(ncols) if ncols else math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), pad_value, np.uint8)
  for i in range(nrows * ncols):
    r, q = divmod(i, ncols)
    y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
    grid[y0:y0 + h, x0:x0 + w] = tiles[i] if i < n else 0
  return grid


def save_image_grid(images, path, ncols=None, scale=None, padding=None, pad_value=255):
  """Writes the grid of `make_image_grid` as a PNG (mode L for one channel, RGB for three); returns the array."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  grid = make_image_grid(images, ncols=ncols, scale=scale, padding=padding, pad_value=pad_value)
  image = Image.fromarray(np.ascontiguousarray(grid[..., 0] if grid.shape[-1] == 1 else grid))  # L or RGB
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  paths.write_bytes(path, buf.getvalue())   # local or gs://...
  return grid


def save_scatter(points, path, reference=None, title=None, lim=None, marker_size=2.0, dpi=100):
  """Scatter plot of 2-D points [N, 2] (over `reference` [M, 2] in grey if given) written to `path`.

  Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend state, no display needed).
  `lim`: axis limits, a number L for [-L, L] on both axes or ((xmin, xmax), (ymin, ymax)); default: fitted to
  the reference (or the points) with a margin.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  points = np.asarray(points, dtype=np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"points must be [N, 2], got shape {points.shape}")
  fig = Figure(figsize=(5, 5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  if reference is not None:
    reference = np.asarray(reference, dtype=np.float64)
    ax.scatter(reference[:, 0], reference[:, 1], s=marker_size, c="0.7", alpha=0.5, linewidths=0,
               label="reference")
  ax.scatter(points[:, 0], points[:, 1], s=marker_size, c="C0", alpha=0.7, linewidths=0, label="samples")
  if lim is None:
    base = reference if reference is not None else points
    lo, hi = np.nanmin(base, axis=0), np.nanmax(base, axis=0)
    margin = 0.1 * np.maximum(hi - lo, 1e-6)
    lim = ((lo[0] - margin[0], hi[0] + margin[0]), (lo[1] - margin[1], hi[1] + margin[1]))
  elif np.isscalar(lim):
    lim = ((-lim, lim), (-lim, lim))
  ax.set_xlim(*lim[0])
  ax.set_ylim(*lim[1])
  ax.set_aspect("equal")
  if reference is not None:
    ax.legend(loc="upper right", markerscale=4, fontsize="small")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, dpi=dpi, format="png")
  paths.write_bytes(path, buf.getvalue())
