"""The one path layer: every file a run reads or writes goes through here, local or remote alike.

A path is a string: a local path, or a URL of a file system etils.epath knows (`gs://bucket/dir`, `s3://...`;
the same library orbax uses for checkpoints). Remote files are read and written through fsspec (`gcsfs` for
Cloud Storage, installed with the `gcs` extra), checkpoint arrays through tensorstore (by orbax).

What differs on object stores, and how it is handled here:
- no atomic rename: `write_text`/`write_bytes` write to a temporary file and rename it locally; on an object
  store a single object write is already atomic (readers see the old or the new object), so they write directly;
- no append: callers that append (metrics.jsonl) rewrite the whole object instead (train.MetricWriter);
- no directories: `makedirs` is a no-op there, `isdir` is true once any object lies under the prefix;
- no advisory locks: see train.WorkdirLock.

Paths a run's config names (`CONFIG_PATHS`) are made absolute when the run starts (`resolve_config`), so its
config.json can be used from another working directory or machine; remote paths are kept as given.
"""
import io
import os
import uuid
from typing import Iterable, List, Union

from etils import epath

PathLike = Union[str, os.PathLike]

# Config keys that hold a path (made absolute by resolve_config; '' means unset).
CONFIG_PATHS = ("teacher.workdir", "teacher.init_workdir", "data.path", "data.tfds_data_dir", "eval.inception_weights",
                "eval.ref_stats")


def is_remote(path: PathLike) -> bool:
  """True for URLs such as gs://bucket/x (anything with a scheme); False for local paths."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> str:
  """A local path made absolute (~ expanded); a remote path or '' unchanged."""
  path = os.fspath(path)
  if not path or is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def resolve_config(config):
  """A copy of the ConfigDict `config` whose CONFIG_PATHS are absolute (remote ones as given)."""
  config = config.copy_and_resolve_references()
  for key in CONFIG_PATHS:
    section, name = key.split(".")
    if section in config and name in config[section] and isinstance(config[section][name], str):
      with config[section].ignore_type():
        config[section][name] = resolve(config[section][name])
  return config


def path(p: PathLike) -> epath.Path:
  return epath.Path(os.fspath(p))


def join(base: PathLike, *parts: str) -> str:
  return os.fspath(path(base).joinpath(*parts))


def parent(p: PathLike) -> str:
  return os.fspath(path(p).parent)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  return path(p).is_file()


def makedirs(p: PathLike) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> List[str]:
  """The names in a directory, sorted ([] if it does not exist)."""
  d = path(p)
  return sorted(c.name for c in d.iterdir()) if d.exists() else []


def remove(p: PathLike) -> None:
  """Deletes a file if it exists."""
  f = path(p)
  if f.exists():
    f.unlink()


def move(src: PathLike, dst: PathLike) -> None:
  """Moves a file or directory (on object stores: copy, then delete)."""
  makedirs(parent(dst))
  path(src).rename(path(dst))


def open_file(p: PathLike, mode: str = "rb"):
  """A file object (read or write) for a local or remote path."""
  return path(p).open(mode)


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` at once: readers see the old or the new file, never a part (see the module docstring)."""
  target = path(p)
  makedirs(target.parent)
  if is_remote(p):
    target.write_bytes(data)
    return
  tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, target)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def write_lines(p: PathLike, lines: Iterable[str]) -> None:
  write_text(p, "".join(lines))


def save_npz(p: PathLike, **arrays) -> None:
  """np.savez to a local or remote path."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(p, buf.getvalue())


def load_npz(p: PathLike):
  """The arrays of an .npz (allow_pickle=False) as a dict, from a local or remote path."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}
