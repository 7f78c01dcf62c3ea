"""gendistill.generate: files, shapes, labels and per-seed determinism, with the teacher's workdir absent."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import edm as edm_config
from configs import sid as sid_config
from gendistill import checkpoint as ckpt_lib
from gendistill import data as data_lib
from gendistill import generate
from gendistill import objectives
from gendistill import teachers
from gendistill.objectives.base import example_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_run(config, workdir, teacher=None, step=3):
  """A workdir as train.py leaves it (config.json + an orbax checkpoint), from the objective's init."""
  spec = data_lib.build(config.data).spec
  objective = objectives.build(config, spec)
  state = objective.init(jax.random.key(0), example_batch(spec), teacher)
  state = state.replace(step=state.step + step)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  ckpt.save(step, state, {"next_index": step})
  ckpt.close()
  ckpt_lib.write_run_info(workdir, config, spec)
  return objective, state, spec


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
  """A one-step SiD student on digits whose init copied a teacher (init='teacher') from a workdir that no
  longer exists: generating must need neither."""
  workdir = str(tmp_path_factory.mktemp("sid"))
  config = sid_config.get_config("digits,smoke")
  config.teacher.update(source="workdir", workdir=os.path.join(workdir, "deleted_teacher"))
  config.objective.sid.init = "teacher"
  spec = data_lib.build(config.data).spec
  teacher = teachers.random_network(config.network, spec, seed=1)
  objective, state, spec = _make_run(config, workdir, teacher)
  return workdir, objective, state, spec


def test_student_samples_per_seed_without_teacher(student_run, tmp_path):
  workdir, objective, state, spec = student_run
  assert not os.path.exists(os.path.join(workdir, "deleted_teacher"))
  gen = generate.load(workdir)
  assert int(gen.state.step) == 3
  seeds = list(range(12))
  labels = gen.labels_for(seeds)
  np.testing.assert_array_equal(labels, np.arange(12) % 10)
  samples = gen(seeds, labels, batch_size=8)
  assert samples.shape == (12,) + spec.shape and np.all(np.isfinite(samples))
  # Sample i depends only on seed i: other batch sizes and companions give the same sample.
  again = gen([7, 3], labels[[7, 3]], batch_size=8)
  np.testing.assert_allclose(again, samples[[7, 3]], atol=1e-5)
  single = gen([5], labels[[5]], batch_size=1)
  np.testing.assert_allclose(single[0], samples[5], atol=1e-5)
  assert not np.allclose(samples[0], samples[10])    # same class, other seed
  # The restored generator is the exported network: its samples are the objective's own sampler's.
  ref = objective.sample(state, jax.random.key(5), 1, np.array([5]), None)[0]
  np.testing.assert_allclose(samples[5], np.asarray(ref), atol=1e-4)
  # A fixed class.
  fixed = gen.labels_for(seeds[:4], class_idx=2)
  np.testing.assert_array_equal(fixed, [2, 2, 2, 2])
  with pytest.raises(ValueError, match="10 classes"):
    gen.labels_for(seeds, class_idx=10)

  # Writers: .npz, one PNG per seed, a padded grid.
  generate.write(samples, seeds, labels, str(tmp_path / "s.npz"), spec)
  with np.load(tmp_path / "s.npz") as f:
    assert f["images"].dtype == np.uint8 and f["images"].shape == (12, 16, 16, 1)
    np.testing.assert_array_equal(f["labels"], labels)
    np.testing.assert_array_equal(f["seeds"], seeds)
  generate.write(samples, seeds, labels, str(tmp_path / "pngs"), spec)
  assert sorted(os.listdir(tmp_path / "pngs")) == [f"{s:06d}.png" for s in seeds]
  with Image.open(tmp_path / "pngs" / "000007.png") as im:
    np.testing.assert_array_equal(np.asarray(im), generate.grid_lib.to_uint8(samples[7, ..., 0]))
  with pytest.raises(ValueError, match="--grid"):
    generate.write(samples, seeds, labels, str(tmp_path / "one.png"), spec)


def test_cli_writes_grid_and_npz(student_run, tmp_path):
  workdir = student_run[0]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "grid.png"
  cmd = [sys.executable, "-m", "gendistill.generate", f"--workdir={workdir}", "--seeds=0-19", "--grid",
         f"--out={out}"]
  result = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with Image.open(out) as im:
    # 10 columns (one per class), 2 rows of 64-pixel tiles (16x16 enlarged 4x) with padding between them.
    width, height = im.size
  assert width > 10 * 64 and height > 2 * 64 and width < 10 * 72
  result = subprocess.run(cmd[:4] + ["--num=4", "--class=3", f"--out={tmp_path / 'c3.npz'}"], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "c3.npz") as f:
    np.testing.assert_array_equal(f["labels"], [3, 3, 3, 3])
    assert f["images"].shape == (4, 16, 16, 1)


def test_edm_run_heun_and_toy_student(tmp_path):
  # A diffusion run samples with Heun (--steps); a toy student writes points and a scatter plot over the data.
  config = edm_config.get_config("digits,smoke")
  _make_run(config, str(tmp_path / "edm"))
  gen = generate.load(str(tmp_path / "edm"), steps=2, guidance=1.5)
  assert gen.config.sampler.guidance == 1.5
  x = gen([0, 1], gen.labels_for([0, 1]), batch_size=2)
  assert x.shape == (2, 16, 16, 1) and np.all(np.isfinite(x))

  config = sid_config.get_config("toy2d,smoke")
  _make_run(config, str(tmp_path / "toy"))
  gen = generate.load(str(tmp_path / "toy"))
  assert gen.labels_for([0, 1]) is None
  seeds = list(range(100))
  pts = gen(seeds, None, batch_size=64)
  assert pts.shape == (100, 2)
  generate.write(pts, seeds, None, str(tmp_path / "toy.npz"), gen.spec)
  with np.load(tmp_path / "toy.npz") as f:
    np.testing.assert_array_equal(f["x"], pts)
    assert "labels" not in f
  generate.write(pts, seeds, None, str(tmp_path / "toy.png"), gen.spec, as_grid=True,
                 reference=generate._reference(gen.config, 500))
  assert (tmp_path / "toy.png").stat().st_size > 0
  with pytest.raises(ValueError, match="not images"):
    generate.write(pts, seeds, None, str(tmp_path / "dir"), gen.spec)
  with pytest.raises(FileNotFoundError, match="config.json"):
    generate.load(str(tmp_path / "nothing"))


def test_parse_seeds():
  assert generate.parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
  with pytest.raises(ValueError, match="seeds"):
    generate.parse_seeds("3-1")
  with pytest.raises(ValueError, match="seeds"):
    generate.parse_seeds("a")


def test_evaluate_student_without_teacher(student_run):
  from gendistill import evaluate
  results = evaluate.evaluate_run(student_run[0], num_samples=20, batch_size=20)
  assert results["step"] == 3 and np.isfinite(results["digits_fd"])


def test_generate_from_exported_file_matches_the_workdir(student_run, tmp_path):
  """`convert --export` files (.safetensors and .pt) sample as their run does: the same samples per seed, the
  student's one-step generator and an EDM run's Heun sampler alike; the CLI takes --network=FILE."""
  from gendistill import convert
  workdir = student_run[0]
  seeds = list(range(6))
  from_workdir = generate.load(workdir)
  expected = from_workdir(seeds, from_workdir.labels_for(seeds))
  for name in ("g.safetensors", "g.pt"):
    convert.export_run(workdir, str(tmp_path / name))
    gen = generate.load_exported(str(tmp_path / name))
    assert int(gen.state.step) == 3 and gen.config.objective.name == "sid"
    np.testing.assert_allclose(gen(seeds, gen.labels_for(seeds)), expected, atol=1e-5)

  config = edm_config.get_config("digits,smoke")
  _make_run(config, str(tmp_path / "edm"))
  convert.export_run(str(tmp_path / "edm"), str(tmp_path / "edm.safetensors"))
  heun = generate.load_exported(str(tmp_path / "edm.safetensors"), steps=2)
  np.testing.assert_allclose(heun([0, 1], heun.labels_for([0, 1])),
                             generate.load(str(tmp_path / "edm"), steps=2)([0, 1], heun.labels_for([0, 1])),
                             atol=1e-5)

  # A file without the run's description (written by export_generator alone) says what to do.
  teacher = teachers.from_workdir(workdir)
  info = ckpt_lib.read_run_info(workdir)
  convert.export_generator(teacher.params, info["config"]["network"], student_run[3], str(tmp_path / "bare.pt"))
  with pytest.raises(ValueError, match="records no run"):
    generate.load_exported(str(tmp_path / "bare.pt"))

  result = subprocess.run([sys.executable, "-m", "gendistill.generate", f"--network={tmp_path / 'g.pt'}",
                           "--seeds=0-5", f"--out={tmp_path / 'x.npz'}"], cwd=str(tmp_path),
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "x.npz") as f:
    np.testing.assert_allclose(f["images"].astype(int), generate.grid_lib.to_uint8(expected).astype(int), atol=1)
    np.testing.assert_array_equal(f["labels"], np.arange(6) % 10)
