"""Writing networks for PyTorch users: a torch.save-format state dict (.pt) and .safetensors, without torch.

The .pt file is the zip layout torch.save writes (`<name>/data.pkl`, `<name>/data/<key>`, `<name>/version`,
`<name>/byteorder`) whose pickle uses only what `torch.load(weights_only=True)` allows: an OrderedDict of
`torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())` with storages as persistent
ids ('storage', torch.FloatStorage, key, 'cpu', numel). The pickle is written opcode by opcode (protocol 2), so
no torch import is needed. Metadata (the architecture and the run that made the network) goes into the
.safetensors header, and into the .pt archive as one more record, `<name>/gendistill_metadata.json`, which
torch.load ignores (checked with torch 2.13, weights_only=True); `read_metadata` reads either back.
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Dict, Mapping, Optional

import numpy as np

_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                  np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
                  np.dtype("int32"): "IntStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage"}


class _Writer:
  """Just the pickle opcodes a state dict needs."""

  def __init__(self):
    self.out = io.BytesIO()
    self.out.write(pickle.PROTO + bytes([2]))

  def op(self, code: bytes):
    self.out.write(code)

  def global_(self, module: str, name: str):
    self.op(pickle.GLOBAL + f"{module}\n{name}\n".encode())

  def str_(self, s: str):
    b = s.encode("utf-8")
    self.op(pickle.BINUNICODE + struct.pack("<I", len(b)) + b)

  def int_(self, i: int):
    if 0 <= i < 2**31:
      self.op(pickle.BININT + struct.pack("<i", i))
    else:
      b = pickle.encode_long(i)
      self.op(pickle.LONG1 + bytes([len(b)]) + b)

  def tuple_(self, items):
    self.op(pickle.MARK)
    for item in items:
      self.value(item)
    self.op(pickle.TUPLE)

  def value(self, v):
    if isinstance(v, bool):
      self.op(pickle.NEWTRUE if v else pickle.NEWFALSE)
    elif isinstance(v, int):
      self.int_(v)
    elif isinstance(v, str):
      self.str_(v)
    elif isinstance(v, tuple):
      self.tuple_(v)
    else:
      raise TypeError(type(v))

  def ordered_dict(self):
    self.global_("collections", "OrderedDict")
    self.op(pickle.EMPTY_TUPLE + pickle.REDUCE)

  def tensor(self, key: str, arr: np.ndarray):
    self.global_("torch._utils", "_rebuild_tensor_v2")
    self.op(pickle.MARK)
    # persistent id ('storage', torch.<X>Storage, key, 'cpu', numel)
    self.op(pickle.MARK)
    self.str_("storage")
    self.global_("torch", _STORAGE_NAMES[arr.dtype])
    self.str_(key)
    self.str_("cpu")
    self.int_(arr.size)
    self.op(pickle.TUPLE + pickle.BINPERSID)
    self.int_(0)
    self.tuple_(tuple(int(d) for d in arr.shape))
    strides = tuple(int(s // arr.itemsize) for s in np.asarray(arr, order="C").strides) if arr.ndim else ()
    self.tuple_(strides)
    self.op(pickle.NEWFALSE)
    self.ordered_dict()
    self.op(pickle.TUPLE + pickle.REDUCE)


METADATA_RECORD = "gendistill_metadata.json"


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str, archive_name: str = "archive",
                          metadata: Optional[Dict[str, str]] = None):
  """`state_dict` (name -> numpy array) as a file that torch.load(path, weights_only=True) reads."""
  arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}
  for k, v in arrays.items():
    if v.dtype not in _STORAGE_NAMES:
      raise ValueError(f"Cannot write {k} of dtype {v.dtype} to a .pt file.")
  w = _Writer()
  w.ordered_dict()
  w.op(pickle.MARK)
  for i, (k, v) in enumerate(arrays.items()):
    w.str_(k)
    w.tensor(str(i), v)
  w.op(pickle.SETITEMS + pickle.STOP)
  tmp = path + ".tmp"
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
    z.writestr(f"{archive_name}/data.pkl", w.out.getvalue())
    z.writestr(f"{archive_name}/byteorder", "little")
    for i, v in enumerate(arrays.values()):
      z.writestr(f"{archive_name}/data/{i}", v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes())
    z.writestr(f"{archive_name}/version", "3\n")
    if metadata:
      z.writestr(f"{archive_name}/{METADATA_RECORD}", json.dumps(metadata))
  os.replace(tmp, path)


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str, metadata: Optional[Dict[str, str]] = None):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  tmp = path + ".tmp"
  save_file({k: np.asarray(v, order="C") for k, v in state_dict.items()}, tmp, metadata=metadata)
  os.replace(tmp, path)


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str, metadata: Optional[Dict[str, str]] = None):
  """By extension: .pt/.pth (torch.save zip format) or .safetensors."""
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pt", ".pth"):
    save_torch_state_dict(collections.OrderedDict(state_dict), path, metadata=metadata)
  elif ext == ".safetensors":
    save_safetensors(state_dict, path, metadata)
  else:
    raise ValueError(f"Export path {path!r}: expected a .pt, .pth or .safetensors file name.")


def read_metadata(path: str) -> Dict[str, str]:
  """The metadata save_state_dict wrote into `path` ({} for files from elsewhere)."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(path, framework="numpy") as f:
      return dict(f.metadata() or {})
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      names = [n for n in z.namelist() if n.endswith("/" + METADATA_RECORD)]
      if names:
        return {str(k): str(v) for k, v in json.loads(z.read(names[0])).items()}
  return {}
