"""Image files in EDM's dataset layout (directory, zip, .npz), x-flip, and an unprepared tfds dataset."""
import json
import os
import time
import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gendistill import data


def _config(**kw):
  return ml_collections.ConfigDict({**data.DEFAULTS, **kw})


def _images(n=10, size=8, channels=3):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), (np.arange(n) * 7) % 4


def _write_folder(root, images, labels):
  """EDM's dataset_tool layout: 00000/img00000000.png ... and dataset.json with [path, label] pairs."""
  pairs = []
  for i, (image, label) in enumerate(zip(images, labels)):
    name = f"{i // 4:05d}/img{i:08d}.png"
    os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(root, name))
    pairs.append([name, int(label)])
  with open(os.path.join(root, "dataset.json"), "w") as f:
    json.dump({"labels": pairs}, f)


def _to_uint8(x):
  return np.round((x + 1) * 127.5).astype(np.uint8)


@pytest.mark.parametrize("kind", ["folder", "zip", "npz"])
def test_image_files_round_trip(kind, tmp_path):
  images, labels = _images()
  root = str(tmp_path / "ds")
  _write_folder(root, images, labels)
  path = root
  if kind == "zip":
    path = str(tmp_path / "ds.zip")
    with zipfile.ZipFile(path, "w") as z:
      for dirpath, _, files in os.walk(root):
        for f in files:
          full = os.path.join(dirpath, f)
          z.write(full, os.path.relpath(full, root))
  elif kind == "npz":
    path = str(tmp_path / "ds.npz")
    np.savez(path, images=images, labels=labels)
  ds = data.build(_config(name="images", path=path, batch_size=5, conditional=True))
  assert ds.spec == data.DataSpec("image", (8, 8, 3), 4) and ds.num_examples == 10
  ref = ds.reference()
  np.testing.assert_array_equal(_to_uint8(ref["image"]), images)   # exact: PNG is lossless, order kept
  np.testing.assert_array_equal(ref["label"], labels)
  # One epoch of batches holds every (image, label) exactly once.
  it = ds.iterator()
  epoch = [next(it) for _ in range(2)]
  got = sorted((_to_uint8(im).tobytes(), int(lb)) for b in epoch for im, lb in zip(b["image"], b["label"]))
  assert got == sorted((im.tobytes(), int(lb)) for im, lb in zip(images, labels))
  # x-flip doubles the data with mirrored copies; the reference stays the original images.
  flipped = data.build(_config(name="images", path=path, batch_size=20, conditional=False, xflip=True))
  assert flipped.num_examples == 20 and flipped.spec.num_classes == 0
  batch = next(flipped.iterator())
  assert set(batch) == {"image"}
  got = sorted(_to_uint8(im).tobytes() for im in batch["image"])
  assert got == sorted([im.tobytes() for im in images] + [im[:, ::-1].tobytes() for im in images])
  np.testing.assert_array_equal(_to_uint8(flipped.reference()["image"]), images)


def test_image_folder_without_labels_and_bad_input(tmp_path):
  images, _ = _images(3, channels=1)
  root = tmp_path / "gray"
  root.mkdir()
  for i, im in enumerate(images):
    Image.fromarray(im[..., 0]).save(root / f"{i}.png")
  ds = data.build(_config(name="images", path=str(root), batch_size=3, conditional=False, image_size=4))
  assert ds.spec == data.DataSpec("image", (4, 4, 1), 0)
  with pytest.raises(ValueError, match="dataset.json"):
    data.build(_config(name="images", path=str(root), batch_size=3, conditional=True))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.build(_config(name="images", path=str(tmp_path / "missing"), batch_size=3))
  with pytest.raises(ValueError, match="data.path"):
    data.build(_config(name="images", path="", batch_size=3))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="No image files"):
    data.build(_config(name="images", path=str(tmp_path / "empty"), batch_size=3))
  np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    data.build(_config(name="images", path=str(tmp_path / "bad.npz"), batch_size=2))
  with pytest.raises(ValueError, match="xflip"):
    data.build(_config(name="toy2d", xflip=True, batch_size=2))


def test_digits_xflip():
  plain = data.build(_config(name="digits", image_size=8, batch_size=4, conditional=True))
  flipped = data.build(_config(name="digits", image_size=8, batch_size=4, conditional=True, xflip=True))
  assert flipped.num_examples == 2 * plain.num_examples


def test_unprepared_tfds_dataset_fails_fast_with_the_preparation_command(tmp_path):
  t0 = time.monotonic()
  with pytest.raises(FileNotFoundError) as info:
    data.build(_config(name="tfds", tfds_name="cifar10", tfds_data_dir=str(tmp_path), batch_size=8))
  elapsed = time.monotonic() - t0
  message = str(info.value)
  assert "not prepared" in message and "tfds build cifar10" in message and "array_record" in message
  assert str(tmp_path) in message
  assert elapsed < 5.0, elapsed


def test_ref_stats_of_an_image_npz_match_the_features(tmp_path):
  from gendistill import ref_stats
  from gendistill.evaluation import frechet, inception, metrics
  images, labels = _images(6)
  np.savez(tmp_path / "ds.npz", images=images, labels=labels)
  weights = str(tmp_path / "inception.npz")
  inception.save_params_npz(inception.random_state_dict(0), weights)
  cfg = ref_stats.data_config(data=str(tmp_path / "ds.npz"))
  stats = ref_stats.compute(cfg, weights, num=5, batch_size=4)
  assert str(stats["preprocessing"]) == "nvidia" and int(stats["num_samples"]) == 5
  pool = inception.InceptionFeatures.from_file(weights, preprocessing="nvidia").features(images[:5], batch_size=4)
  mu, sigma = frechet.feature_statistics(pool["pool"])
  np.testing.assert_allclose(stats["mu"], mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["sigma"], sigma, rtol=1e-4, atol=1e-6)
  ref_stats.write(stats, str(tmp_path / "out" / "ref.npz"))
  with pytest.warns(Warning, match="rank-deficient"):   # 5 images: fine for a test, not for a FID
    loaded = metrics.load_stats(str(tmp_path / "out" / "ref.npz"))
  np.testing.assert_array_equal(loaded["mu"], stats["mu"])
  with pytest.raises(ValueError, match="exactly one"):
    ref_stats.data_config(data="a", tfds="b")
