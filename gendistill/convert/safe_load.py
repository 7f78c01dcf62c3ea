"""Reading network weights from the files people hold, without torch and without running any code in them.

`load_weights(path) -> Checkpoint` reads:
  .pkl          EDM / EDM2 network pickles (`dict(ema=<network>, ...)`, classes from `torch_utils.persistence`)
  .pt / .pth    torch.save files (zip format, and the legacy non-zip format)
  .safetensors  through the `safetensors` package's numpy API
  .npz          numpy archives (allow_pickle=False)

Pickles are read by `RestrictedUnpickler`, whose `find_class` resolves only the globals in `_ALLOWED` to our own
data-only stand-ins; any other global is refused with `UnsafePickleError` naming it. In particular the
persistence wrapper's `_reconstruct_persistent_obj`, which on normal unpickling `exec`s the source code embedded
in the file, is mapped to a function that records the class name, its constructor arguments and its
parameters, buffers and submodules as data and never looks at the source. Tensors become numpy arrays
(bfloat16 through ml_dtypes). A plain `pickle.load` of a user's file happens nowhere in the library.

For other network families (e.g. EDM2's): `load_weights(path).network` is the pickle's top object as a
`PersistentObject` (class_name, init_kwargs, .state_dict()), and mapping.torch_to_flax takes a leaf table.
"""
import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Optional

import numpy as np


class WeightsFileError(ValueError):
  """A weights file that cannot be read (truncated, corrupt, unknown format)."""


class UnsafePickleError(WeightsFileError):
  """A pickle that asks for a global outside the allowed set (it could run code when loaded normally)."""


def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (a dependency of jax)
  return np.dtype(ml_dtypes.bfloat16)


# torch storage class name -> numpy dtype name.
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
# torch dtype attribute name -> numpy dtype name (torch.float32 etc. may appear in pickles as globals).
_TORCH_DTYPES = {"float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
                 "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
                 "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8",
                 "uint8": "uint8", "bool": "bool"}


def _np_dtype(name: str) -> np.dtype:
  return _bfloat16() if name == "bfloat16" else np.dtype(name)


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for a torch storage class (torch.FloatStorage, ...): only its element dtype."""
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class TorchDtype:
  """Stand-in for a torch.dtype global."""
  name: str


@dataclasses.dataclass
class PersistentObject:
  """A `torch_utils.persistence` object read as data: what the pickle says, none of its code run.

  class_name: the original class (e.g. 'EDMPrecond', 'SongUNet'); init_args/init_kwargs: its constructor
  arguments as recorded by the persistence wrapper; attributes: the other plain attributes of its __dict__;
  parameters/buffers: name -> numpy array; modules: name -> PersistentObject or Module (submodules).
  """
  class_name: str
  init_args: tuple = ()
  init_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  attributes: Dict[str, Any] = dataclasses.field(default_factory=dict)
  parameters: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  buffers: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  modules: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def state_dict(self, prefix: str = "") -> Dict[str, np.ndarray]:
    """The flat `torch.nn.Module.state_dict()`: parameters and persistent buffers, 'sub.name' keys."""
    return _state_dict(self, prefix)


@dataclasses.dataclass
class Module(PersistentObject):
  """A plain torch.nn container (ModuleDict, ModuleList, Sequential) inside a network."""


def _state_dict(module, prefix):
  out = {}
  for name, value in module.parameters.items():
    if value is not None:
      out[prefix + name] = value
  skip = module.attributes.get("_non_persistent_buffers_set", set()) or set()
  for name, value in module.buffers.items():
    if value is not None and name not in skip:
      out[prefix + name] = value
  for name, sub in module.modules.items():
    if sub is not None:
      out.update(_state_dict(sub, f"{prefix}{name}."))
  return out


def _from_module_state(obj: PersistentObject, state: Dict[str, Any]) -> PersistentObject:
  state = dict(state)
  obj.parameters = dict(state.pop("_parameters", None) or {})
  obj.buffers = dict(state.pop("_buffers", None) or {})
  obj.modules = dict(state.pop("_modules", None) or {})
  obj.init_args = tuple(state.pop("_init_args", None) or ())
  obj.init_kwargs = dict(state.pop("_init_kwargs", None) or {})
  obj.attributes = {k: v for k, v in state.items() if not k.endswith("hooks") and not k.startswith("_orig_")}
  return obj


def _reconstruct_persistent(meta):
  """Replaces torch_utils.persistence._reconstruct_persistent_obj: keeps the data, ignores meta['module_src']."""
  if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
    raise UnsafePickleError("A torch_utils.persistence object without the expected metadata "
                            "(type='class', class_name, state); not an EDM/EDM2 network pickle.")
  return _from_module_state(PersistentObject(class_name=str(meta["class_name"])), meta.get("state") or {})


class _ModuleStandIn:
  """Created by NEWOBJ for a torch.nn container class; BUILD hands it the module's __dict__."""
  class_name = "Module"

  def __setstate__(self, state):
    self.result = _from_module_state(Module(class_name=self.class_name), state)


def _module_class(class_name):
  return type(class_name, (_ModuleStandIn,), {"class_name": class_name})


class EasyDict(dict):
  """Stand-in for dnnlib.EasyDict (a dict subclass)."""

  def __setstate__(self, state):
    if state:
      self.update(state)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, np.ndarray):
    raise UnsafePickleError(f"A tensor whose storage is a {type(storage).__name__}, not a storage.")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  numel = int(np.prod(size)) if size else 1
  if numel == 0:
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if storage_offset < 0 or last >= storage.size or min(stride, default=0) < 0:
    raise WeightsFileError(f"A tensor of shape {size} runs past the end of its storage ({storage.size} "
                           "elements): the file is truncated or corrupt.")
  itemsize = storage.dtype.itemsize
  # A view: a legacy torch.save file fills its storages after the object pickle; `_unwrap` copies it.
  return np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                         strides=tuple(s * itemsize for s in stride), writeable=False)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


def _numpy_scalar(dtype, data):
  if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or dtype.hasobject:
    raise UnsafePickleError("A numpy scalar that is not a plain number.")
  return np.frombuffer(data, dtype, count=1)[0]


def _numpy_dtype(name, align=False, copy=True):
  del align, copy
  dtype = np.dtype(name)
  if dtype.hasobject:
    raise UnsafePickleError(f"numpy dtype {name!r} holds Python objects.")
  return dtype


class _NumpyArray:
  """numpy.core.multiarray._reconstruct stand-in; BUILD's state is (version, shape, dtype, fortran, raw bytes)."""

  def __setstate__(self, state):
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, bytearray)):
      raise UnsafePickleError("A numpy array of Python objects (only plain numeric arrays are read).")
    self.result = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _numpy_reconstruct(cls, shape, dtype_code):
  del cls, shape, dtype_code
  return _NumpyArray()


def _load_from_bytes(data):
  """torch.storage._load_from_bytes: a storage pickled on its own is a whole torch.save file."""
  return _read_torch_save(io.BytesIO(data), "<storage bytes>", expect_storage=True)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "float"): float,
    ("builtins", "int"): int,
    ("builtins", "bool"): bool,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
}
for _np_mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
  _ALLOWED[(_np_mod, "scalar")] = _numpy_scalar
  _ALLOWED[(_np_mod, "_reconstruct")] = _numpy_reconstruct
_ALLOWED[("numpy", "dtype")] = _numpy_dtype
_ALLOWED[("numpy", "ndarray")] = np.ndarray  # only ever an argument of _reconstruct, never called
for _name, _dt in _STORAGE_DTYPES.items():
  _ALLOWED[("torch", _name)] = _StorageType(_dt)
for _name, _dt in _TORCH_DTYPES.items():
  _ALLOWED[("torch", _name)] = TorchDtype(_dt)
for _name in ("ModuleDict", "ModuleList", "Sequential"):
  _ALLOWED[("torch.nn.modules.container", _name)] = _module_class(_name)
for _name in ("Identity", "SiLU", "ReLU", "GELU", "Dropout"):
  _ALLOWED[("torch.nn.modules.linear" if _name == "Identity" else
            "torch.nn.modules.dropout" if _name == "Dropout" else "torch.nn.modules.activation", _name)] = \
      _module_class(_name)


def _unwrap(obj):
  """Replaces the NEWOBJ/BUILD stand-ins by what they built, recursively through containers."""
  if isinstance(obj, np.ndarray):
    return np.array(obj)
  if isinstance(obj, (_ModuleStandIn, _NumpyArray)):
    return _unwrap(getattr(obj, "result", None))
  if isinstance(obj, PersistentObject):
    obj.parameters = {k: _unwrap(v) for k, v in obj.parameters.items()}
    obj.buffers = {k: _unwrap(v) for k, v in obj.buffers.items()}
    obj.modules = {k: _unwrap(v) for k, v in obj.modules.items()}
    obj.init_kwargs = {k: _unwrap(v) for k, v in obj.init_kwargs.items()}
    obj.init_args = tuple(_unwrap(v) for v in obj.init_args)
    obj.attributes = {k: _unwrap(v) for k, v in obj.attributes.items()}
    return obj
  if isinstance(obj, EasyDict):
    return {k: _unwrap(v) for k, v in obj.items()}
  if isinstance(obj, dict):
    return type(obj)((k, _unwrap(v)) for k, v in obj.items()) if type(obj) in (dict, collections.OrderedDict) \
        else {k: _unwrap(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_unwrap(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_unwrap(v) for v in obj)
  return obj


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler that resolves only the globals in `_ALLOWED` (data-only stand-ins); anything else raises.

  persistent_load (torch.save files only): `storage_loader(key, dtype, numel) -> np.ndarray` supplies storages.
  """

  def __init__(self, file, source: str, storage_loader=None):
    super().__init__(file)
    self._source = source
    self._storage_loader = storage_loader

  def find_class(self, module, name):
    key = (module, name)
    if key in _ALLOWED:
      return _ALLOWED[key]
    raise UnsafePickleError(
        f"{self._source}: the pickle asks for the global {module}.{name}, which is not allowed (it could run "
        "code). Only tensors, plain containers and EDM/EDM2 network objects are read; if this is a network "
        "file, save its state_dict with torch.save or as .safetensors and convert that.")

  def persistent_load(self, pid):
    if (self._storage_loader is None or not isinstance(pid, tuple) or len(pid) < 5
        or pid[0] not in ("storage", b"storage")):
      raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r:.80} in the pickle.")
    storage_type, key, _, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(f"{self._source}: a storage of unknown type {storage_type!r:.60}.")
    return self._storage_loader(str(key), _np_dtype(storage_type.dtype), int(numel))


def _unpickle(file, source, storage_loader=None):
  try:
    return RestrictedUnpickler(file, source, storage_loader).load()
  except (UnsafePickleError, WeightsFileError):
    raise
  except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, IndexError, KeyError,
          AttributeError) as e:
    raise WeightsFileError(f"{source}: cannot read the pickle ({type(e).__name__}: {e}); the file is "
                           "truncated or corrupt.") from e


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_torch_save(f, source, expect_storage=False):
  """A torch.save file (zip or legacy format) from the open binary file `f`."""
  start = f.read(4)
  f.seek(0)
  if start[:2] == b"PK":
    try:
      archive = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
      raise WeightsFileError(f"{source}: a truncated or corrupt torch.save zip archive ({e}).") from e
    names = archive.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise WeightsFileError(f"{source}: a zip archive without data.pkl; not a torch.save file.")
    prefix = pkl[0][: -len("data.pkl")]

    def load_storage(key, dtype, numel):
      try:
        raw = archive.read(f"{prefix}data/{key}")
      except (KeyError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsFileError(f"{source}: storage {key} is missing or unreadable ({e}).") from e
      if len(raw) < numel * dtype.itemsize:
        raise WeightsFileError(f"{source}: storage {key} has {len(raw)} bytes, expected {numel * dtype.itemsize}.")
      return np.frombuffer(raw, dtype, count=numel)

    try:
      data = archive.read(pkl[0])
    except (zipfile.BadZipFile, EOFError) as e:
      raise WeightsFileError(f"{source}: unreadable data.pkl ({e}).") from e
    return _unwrap(_unpickle(io.BytesIO(data), source, load_storage))

  # Legacy format: magic, protocol, sys_info, the object, the storage keys, then each storage's bytes.
  header = [_unpickle(f, source) for _ in range(3)]
  if header[0] != _LEGACY_MAGIC:
    raise WeightsFileError(f"{source}: not a torch.save file (no zip archive, no legacy magic number).")
  storages = {}

  def declare(key, dtype, numel):
    if key not in storages:
      storages[key] = np.zeros((numel,), dtype)
    return storages[key]

  obj = _unpickle(f, source, declare)
  keys = _unpickle(f, source)
  for key in keys:
    raw = f.read(8)
    if len(raw) != 8:
      raise WeightsFileError(f"{source}: truncated (storage {key} is missing).")
    count = struct.unpack("<q", raw)[0]
    arr = storages[str(key)]
    nbytes = count * arr.dtype.itemsize
    buf = f.read(nbytes)
    if len(buf) != nbytes or count != arr.size:
      raise WeightsFileError(f"{source}: truncated or corrupt (storage {key}: {len(buf)} of {nbytes} bytes).")
    arr[...] = np.frombuffer(buf, arr.dtype)
  obj = _unwrap(obj)
  if expect_storage and not isinstance(obj, np.ndarray):
    raise UnsafePickleError(f"{source}: _load_from_bytes of something other than a storage.")
  return obj


@dataclasses.dataclass
class Checkpoint:
  """What a weights file holds: a flat state dict and, for network pickles, the network object as data.

  state_dict: 'a.b.weight' -> numpy array (PyTorch names and layouts); network: the PersistentObject of an
  EDM/EDM2 pickle (class name and constructor arguments) or None; format: 'pkl' | 'pt' | 'safetensors' | 'npz'.
  """
  state_dict: Dict[str, np.ndarray]
  network: Optional[PersistentObject]
  format: str
  metadata: Dict[str, str] = dataclasses.field(default_factory=dict)


_PICKLE_KEYS = ("ema", "net", "model")


def load_weights(path: str, key: Optional[str] = None) -> Checkpoint:
  """Reads `path` (see the module docstring). `key`: which entry of a network pickle's dict (default: 'ema')."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No weights file {path!r}.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    return _load_safetensors(path)
  if ext == ".npz":
    return _load_npz(path)
  with open(path, "rb") as f:
    head = f.read(2)
    f.seek(0)
    if ext in (".pt", ".pth", ".bin", ".ckpt") or head == b"PK":
      obj = _read_torch_save(f, path)
      return Checkpoint(state_dict=_as_state_dict(obj, path), network=None, format="pt")
    if ext != ".pkl":
      raise WeightsFileError(f"{path}: unknown weights format {ext!r}; expected .pkl, .pt/.pth, .safetensors "
                             "or .npz.")
    obj = _unwrap(_unpickle(f, path))
  if isinstance(obj, PersistentObject):
    net = obj
  elif isinstance(obj, dict):
    names = [key] if key else [k for k in _PICKLE_KEYS if k in obj]
    if not names or names[0] not in obj:
      raise WeightsFileError(f"{path}: the pickle holds keys {sorted(map(str, obj))}, none of them a network "
                             f"({key or ' / '.join(_PICKLE_KEYS)}).")
    net = obj[names[0]]
    if not isinstance(net, PersistentObject):
      return Checkpoint(state_dict=_as_state_dict(net, path), network=None, format="pkl")
  else:
    raise WeightsFileError(f"{path}: the pickle holds a {type(obj).__name__}, not a network or a dict.")
  return Checkpoint(state_dict=net.state_dict(), network=net, format="pkl")


def _as_state_dict(obj, source) -> Dict[str, np.ndarray]:
  """A flat name -> array dict from a torch.save'd object (a state dict, possibly under 'state_dict'/'ema')."""
  if isinstance(obj, PersistentObject):
    return obj.state_dict()
  if isinstance(obj, dict):
    for wrapper in ("state_dict", "ema", "model", "net"):
      if wrapper in obj and isinstance(obj[wrapper], (dict, PersistentObject)) and not isinstance(
          obj[wrapper], np.ndarray):
        return _as_state_dict(obj[wrapper], source)
    out = {}
    for k, v in obj.items():
      if isinstance(v, np.ndarray):
        out[str(k)] = v
      elif isinstance(v, dict):
        out.update({f"{k}.{kk}": vv for kk, vv in _as_state_dict(v, source).items()})
    if out:
      return out
  raise WeightsFileError(f"{source}: holds a {type(obj).__name__} without tensors; expected a state dict.")


def _load_safetensors(path) -> Checkpoint:
  try:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading .safetensors needs the `safetensors` package (pip install safetensors).") from e
  try:
    with safe_open(path, framework="numpy") as f:
      meta = dict(f.metadata() or {})
      state = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # the package raises its own SafetensorError for truncated or corrupt headers
    raise WeightsFileError(f"{path}: cannot read the safetensors file ({type(e).__name__}: {e}); it is "
                           "truncated or corrupt.") from e
  return Checkpoint(state_dict=state, network=None, format="safetensors", metadata=meta)


def _load_npz(path) -> Checkpoint:
  try:
    with np.load(path, allow_pickle=False) as z:
      state = {k: z[k] for k in z.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise WeightsFileError(f"{path}: cannot read the npz file ({type(e).__name__}: {e}); it is truncated, "
                           "corrupt or holds Python objects.") from e
  return Checkpoint(state_dict=state, network=None, format="npz")
