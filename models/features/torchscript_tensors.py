"""The tensors of a TorchScript archive, read as data: no code stored in the archive is ever run.

    tensors = read_torchscript_tensors(path, sha256="7ff4...")   # {'net.layers.conv.weight': tensor, ...}
    root = read_torchscript_archive(path)                        # ScriptRecord tree (attributes, submodules)

`torch.jit.load` compiles and runs the Python-like code stored under `code/` in the archive; a file from a
package is a program. But the weights themselves are a plain ZIP: `<top>/data.pkl` is a pickle of the module
tree (one object per module, built from a `__torch__.<qualified class name>` global and a dict of attributes)
whose tensors point, through pickle persistent ids `('storage', torch.FloatStorage, key, device, numel)`, at
raw little-endian blobs `<top>/data/<key>`. Here that pickle is read by `ArchiveUnpickler`, whose `find_class`
resolves an allowlist only:

- `torch._utils._rebuild_tensor_v2` -> a local rebuild (a strided view of the storage; no hooks allowed);
- `torch.<Type>Storage` -> a dtype token for the persistent id; `collections.OrderedDict`;
- `torch.jit._pickle.build_{int,float,bool}list` -> local list builders (module attributes like padding);
- `__torch__.*` (the archive's own module classes) -> inert `ScriptRecord` subclasses that only store the
  attribute dict; their methods (the archive's code) are never looked up, compiled or called.

Anything else - `os.system`, `builtins.eval`, a torch function outside the list - raises UnsafeArchiveError
before it is resolved. `torch.load` is not used either: on a TorchScript ZIP it dispatches to `torch.jit.load`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from models.features.offline_weights import verify_sha256


class UnsafeArchiveError(pickle.UnpicklingError):
    """The archive's pickle references a global outside the allowlist (possible code execution); names it."""


class ArchiveFormatError(ValueError):
    """Not a TorchScript archive this reader understands (no single data.pkl, missing storage, bad layout)."""


_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    """Stands for `torch.FloatStorage` & co. inside a persistent id: only its dtype is used."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class ScriptRecord:
    """An archive module object, minus its code: the qualified class name and the attributes it was saved with."""

    qualified_name = "?"

    attributes: dict[str, Any]

    def __new__(cls, *args: Any) -> ScriptRecord:   # pickle NEWOBJ; TorchScript modules pass no arguments
        if args:
            raise UnsafeArchiveError(f"{cls.qualified_name}: unexpected constructor arguments")
        obj = super().__new__(cls)
        obj.attributes = {}
        return obj

    def __setstate__(self, state: Any) -> None:  # pickle BUILD
        if not isinstance(state, dict):
            raise ArchiveFormatError(f"{self.qualified_name}: state is {type(state).__name__}, expected a dict")
        self.attributes = dict(state)

    def __repr__(self) -> str:
        return f"ScriptRecord({self.qualified_name}, {sorted(self.attributes)})"


_record_classes: dict[str, type[ScriptRecord]] = {}


def _record_class(qualified_name: str) -> type[ScriptRecord]:
    if qualified_name not in _record_classes:
        _record_classes[qualified_name] = type("ScriptRecord", (ScriptRecord,), {"qualified_name": qualified_name})
    return _record_classes[qualified_name]


def _build_list(kind: type) -> Any:
    def build(items: Any) -> list:
        if not isinstance(items, list) or not all(isinstance(v, kind) for v in items):
            raise UnsafeArchiveError(f"build_{kind.__name__}list expects a list of {kind.__name__}")
        return list(items)
    return build


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, requires_grad: bool,
                    backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    """`_rebuild_tensor_v2`'s arguments -> a strided view of the storage (no hooks, no metadata)."""
    if not isinstance(storage, torch.Tensor) or storage.ndim != 1:
        raise UnsafeArchiveError("tensor rebuild from something other than an archive storage")
    if backward_hooks or metadata:
        raise UnsafeArchiveError("tensor rebuild with backward hooks or metadata is not allowed")
    if not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise ArchiveFormatError("tensor rebuild with a non-integer size, stride or offset")
    need = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if need > storage.numel():
        raise ArchiveFormatError(f"tensor {tuple(size)} reaches past its storage ({storage.numel()} elements)")
    return storage.as_strided(tuple(size), tuple(stride), offset)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _build_list(int),
    ("torch.jit._pickle", "build_floatlist"): _build_list(float),
    ("torch.jit._pickle", "build_boollist"): _build_list(bool),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class ArchiveUnpickler(pickle.Unpickler):
    """Reads an archive's data.pkl resolving only `_ALLOWED` and inert `__torch__.*` records."""

    def __init__(self, fh: Any, zf: zipfile.ZipFile, top: str) -> None:
        super().__init__(fh)
        self._zf, self._top = zf, top
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.startswith("__torch__.") or module == "__torch__":
            if not name.isidentifier():
                raise UnsafeArchiveError(f"refusing archive class name {module}.{name!r}")
            return _record_class(f"{module}.{name}")
        raise UnsafeArchiveError(f"refusing to load global '{module}.{name}': not in the TorchScript-tensor allowlist")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeArchiveError(f"refusing persistent id {pid!r}: not a TorchScript storage reference")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not key.isdigit():
            raise UnsafeArchiveError(f"refusing persistent id {pid!r}")
        if key not in self._storages:
            try:
                raw = self._zf.read(f"{self._top}/data/{key}")
            except KeyError:
                raise ArchiveFormatError(f"storage {key} is missing from the archive") from None
            itemsize = torch.empty((), dtype=stype.dtype).element_size()
            if len(raw) != numel * itemsize:
                raise ArchiveFormatError(f"storage {key}: {len(raw)} bytes, expected {numel} x {itemsize}")
            # bytearray: a writable buffer, so the tensor owns plain memory (frombuffer warns on bytes).
            self._storages[key] = torch.frombuffer(bytearray(raw), dtype=stype.dtype) if numel else \
                torch.empty(0, dtype=stype.dtype)
        return self._storages[key]


def _top_folder(zf: zipfile.ZipFile) -> str:
    tops = [n[: -len("/data.pkl")] for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise ArchiveFormatError(f"expected one <top>/data.pkl in the archive, found {len(tops)}")
    top = tops[0]
    if f"{top}/byteorder" in zf.namelist() and zf.read(f"{top}/byteorder").strip() != b"little":
        raise ArchiveFormatError("big-endian TorchScript archives are not supported")
    return top


def read_torchscript_archive(path: str | os.PathLike, sha256: str | None = None) -> Any:
    """The unpickled `data.pkl` of the archive at `path` (a ScriptRecord tree); sha256 checked first if given."""
    path = Path(path)
    if sha256 is not None:
        verify_sha256(path, sha256, "TorchScript archive")
    if not zipfile.is_zipfile(path):
        raise ArchiveFormatError(f"{path}: not a ZIP file, so not a TorchScript archive")
    with zipfile.ZipFile(path) as zf:
        top = _top_folder(zf)
        data = zf.read(f"{top}/data.pkl")
        return ArchiveUnpickler(io.BytesIO(data), zf, top).load()


_SKIP_ATTRIBUTES = ("training", "_is_full_backward_hook")


def flatten_records(root: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, other attributes) of a ScriptRecord tree, keyed by dotted paths as in `state_dict()`."""
    tensors: dict[str, torch.Tensor] = {}
    attributes: dict[str, Any] = {}
    if not isinstance(root, ScriptRecord):
        raise ArchiveFormatError(f"archive root is {type(root).__name__}, not a module")
    for key, value in root.attributes.items():
        if key in _SKIP_ATTRIBUTES:
            continue
        if isinstance(value, ScriptRecord):
            sub_t, sub_a = flatten_records(value, f"{prefix}{key}.")
            tensors.update(sub_t)
            attributes.update(sub_a)
        elif isinstance(value, torch.Tensor):
            tensors[prefix + key] = value
        else:
            attributes[prefix + key] = value
    return tensors, attributes


def read_torchscript_tensors(path: str | os.PathLike, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """{dotted name: tensor} of the archive's module tree (parameters and buffers alike), read as data."""
    return flatten_records(read_torchscript_archive(path, sha256))[0]
