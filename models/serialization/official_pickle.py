"""Safe import of official StyleGAN2-ADA-PyTorch network pickles, without running any code they carry.

An official snapshot (`training_loop.py`) is a plain `pickle.dump` of
`{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}`. Every network object in it is reduced, by
the official `torch_utils.persistence` machinery, to a call `_reconstruct_persistent_obj(meta)` where
`meta = {'type': 'class', 'version': 6, 'module_src': <whole source of networks.py>, 'class_name': ...,
'state': <the object's __dict__>}`. The official loader `exec`s `module_src`, so opening an untrusted
pickle runs arbitrary code.

Here the pickle is read by `RestrictedUnpickler`, whose `find_class` resolves only an explicit allowlist
of globals; the persistence hook is replaced by a stub that merely records the class name, a sha256 of
the source and the state. The records are then mapped onto this project's classes: each network is
rebuilt from its recorded init kwargs and its parameters/buffers (collected by walking `_parameters`,
`_buffers` and `_modules`) are loaded strictly.

Supported: StyleGAN2-ADA-PyTorch pickles (`training.networks`) and the StyleGAN3 repository's pickles, both
its StyleGAN2-architecture networks (`training.networks_stylegan2`) and its alias-free generators
(`training.networks_stylegan3`, rebuilt as `models.stylegan3.StyleGAN3Generator`; their D is StyleGAN2's).
All use the same persistence format. The class name "Generator" is shared by both families; a generator is
alias-free when its module tree holds a `SynthesisInput` (the Fourier-feature input). Refused with a clear
message: the old TensorFlow StyleGAN2 pickles (see `tf_pickle` for those).
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import importlib
import inspect
import io
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np
import torch

from models.serialization.snapshot import load_state_strict, lookup_class


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allowlist (possible code execution); names it."""

    blame = "input"  # whose fault, for the command-line error boundary (exit codes)


class UnsupportedPickleError(ValueError):
    """A well-formed pickle of a kind this project cannot import (TF StyleGAN2, unknown class, bad kwargs)."""

    blame = "input"  # whose fault, for the command-line error boundary (exit codes)


# ----------------------------------------------------------------------------------------------------
# Records produced instead of live objects.


@dataclasses.dataclass
class PersistentRecord:
    """What an official persistent object would have become, minus the code: name, source hash, state."""

    class_name: str
    version: int
    src_sha256: str
    alias_free: bool          # the embedded source defines StyleGAN3's SynthesisInput (alias-free G)
    state: dict[str, Any]


class PlainModuleRecord:
    """State of a plain `torch.nn` module (not a persistent class) nested in a network."""

    torch_class: str = ""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        # Called by pickle's BUILD opcode; keep the dict, never call torch's own __setstate__.
        if not isinstance(state, dict):
            raise UnsupportedPickleError(f"unexpected state for {self.torch_class}: {type(state).__name__}")
        self.state = state


_plain_stub_cache: dict[str, type[PlainModuleRecord]] = {}


def _plain_module_stub(module: str, name: str) -> type[PlainModuleRecord] | None:
    """A record class standing for `torch.nn.modules.<...>.<name>`, if that really is a torch module class."""
    if not module.startswith("torch.nn.modules.") or not name.isidentifier():
        return None
    real = getattr(sys.modules.get(module), name, None)  # only already-imported torch modules are consulted
    if not (isinstance(real, type) and issubclass(real, torch.nn.Module)):
        return None
    key = f"{module}.{name}"
    if key not in _plain_stub_cache:
        _plain_stub_cache[key] = type(f"Plain_{name}", (PlainModuleRecord,), {"torch_class": key})
    return _plain_stub_cache[key]


# ----------------------------------------------------------------------------------------------------
# Replacements for the globals a network pickle needs.


def _record_persistent_obj(meta: Any) -> PersistentRecord:
    """Stand-in for `torch_utils.persistence._reconstruct_persistent_obj`: records, never executes."""
    if not isinstance(meta, dict):
        raise UnsupportedPickleError(f"persistent object meta is {type(meta).__name__}, expected a dict")
    if meta.get("type") != "class":
        raise UnsupportedPickleError(f"persistent object of type {meta.get('type')!r} is not supported")
    src, class_name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not isinstance(src, str) or not isinstance(class_name, str) or not isinstance(state, dict):
        raise UnsupportedPickleError("persistent object meta lacks module_src/class_name/state")
    return PersistentRecord(
        class_name=class_name,
        version=int(meta.get("version", -1)),
        src_sha256=hashlib.sha256(src.encode("utf-8")).hexdigest(),
        alias_free="class SynthesisInput" in src,
        state=state,
    )


def _load_storage_from_bytes(b: bytes) -> Any:
    # The original calls torch.load(weights_only=False), i.e. a full unpickler; torch's weights-only
    # unpickler reads the same legacy storage blobs without resolving arbitrary globals.
    return torch.load(io.BytesIO(b), weights_only=True)


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles store `bytes` as _codecs.encode(str, 'latin1'); allow exactly that use.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only allowed for latin1 bytes in protocol-2 pickles")
    return codecs.encode(obj, encoding, errors)


def _numpy_scalar(dtype: np.dtype, *data: Any) -> Any:
    # Object scalars would hand back arbitrary pickled objects; a network pickle holds only numbers.
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not allowed")
    return _NP_MULTIARRAY.scalar(dtype, *data)


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy array subtype {subtype!r} is not allowed")
    return _NP_MULTIARRAY._reconstruct(subtype, shape, dtype)


def _rebuild_from_type_v2(func: Callable, new_type: Any, args: tuple, state: Any) -> torch.Tensor:
    # Older torch versions wrap every tensor in this; allow it for plain tensors and parameters only.
    if new_type not in (torch.Tensor, torch.nn.Parameter) or func not in _TENSOR_REBUILDERS:
        raise UnsafePickleError(f"tensor rebuild of type {new_type!r} is not allowed")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


_TF_NETWORK = ("dnnlib.tflib.network", "Network")


_NP_MULTIARRAY = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")

_TENSOR_REBUILDERS: tuple[Callable, ...] = tuple(
    f for f in (
        torch._utils._rebuild_tensor_v2,
        torch._utils._rebuild_parameter,
        getattr(torch._utils, "_rebuild_parameter_with_state", None),
    ) if f is not None
)

# (module, name) -> object. Nothing outside this table is ever imported or called.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,   # module name in torch < 1.10
    ("torch._tensor", "Tensor"): torch.Tensor,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("dnnlib.util", "EasyDict"): dict,      # attribute access is not needed, only the items
    ("dnnlib", "EasyDict"): dict,
    ("builtins", "set"): set,               # protocol < 4 writes sets (e.g. _non_persistent_buffers_set) as calls
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
}
if hasattr(torch._utils, "_rebuild_parameter_with_state"):
    _ALLOWED[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only the globals of `_ALLOWED` (and plain torch.nn module stubs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _TF_NETWORK:
            # Old TF StyleGAN/StyleGAN2 pickles: recognisable from their first global, so say so at once.
            raise UnsupportedPickleError(
                "this is a TensorFlow StyleGAN2 pickle (dnnlib.tflib.network.Network); "
                "converting TensorFlow pickles is not supported yet"
            )
        if module.split(".")[0] in ("pg_modules", "timm"):
            # Projected GAN snapshots pickle their FastGAN / projected-D / timm modules as plain classes (no
            # persistence records, no constructor arguments): nothing to rebuild them from safely yet.
            raise UnsupportedPickleError(
                f"this is a Projected GAN pickle ({module}.{name}); importing those is not supported yet: train "
                "with --cfg fastgan|fastgan_lite here, or convert the weights with the official code"
            )
        obj = _ALLOWED.get((module, name))
        if obj is not None:
            return obj
        stub = _plain_module_stub(module, name)
        if stub is not None:
            return stub
        raise UnsafePickleError(f"refusing to load global '{module}.{name}': not in the network-pickle allowlist")

    def persistent_load(self, pid: Any) -> Any:
        # torch.save-style persistent ids never occur in network pickles; refuse rather than guess.
        raise UnsafePickleError(f"refusing persistent id {pid!r}: not a StyleGAN network pickle")


def restricted_load(f: IO[bytes]) -> Any:
    """Unpickle `f` with the allowlist; persistent objects come back as `PersistentRecord`s."""
    return RestrictedUnpickler(f).load()


# ----------------------------------------------------------------------------------------------------
# Records -> this project's networks.


def _plain(value: Any) -> Any:
    """Deep-convert recorded init args (dict subclasses, numpy scalars) to plain Python values."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def collect_state(record: PersistentRecord | PlainModuleRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a record into state_dict names by walking `_parameters`, `_buffers` and `_modules`."""
    state = getattr(record, "state", None) or {}  # a plain-module stub without BUILD has no state
    out: dict[str, torch.Tensor] = {}
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for table, skip in (("_parameters", set()), ("_buffers", non_persistent)):
        for name, tensor in (state.get(table) or {}).items():
            if tensor is None or name in skip:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise UnsupportedPickleError(f"{prefix}{name}: expected a tensor in {table}, got {type(tensor)}")
            out[prefix + name] = tensor.detach()
    for name, sub in (state.get("_modules") or {}).items():
        if sub is None:
            continue
        if not isinstance(sub, (PersistentRecord, PlainModuleRecord)):
            raise UnsupportedPickleError(f"{prefix}{name}: unexpected submodule object {type(sub).__name__}")
        out.update(collect_state(sub, f"{prefix}{name}."))
    return out


def _iter_records(record: PersistentRecord | PlainModuleRecord) -> Any:
    yield record
    for sub in ((getattr(record, "state", None) or {}).get("_modules") or {}).values():
        if isinstance(sub, (PersistentRecord, PlainModuleRecord)):
            yield from _iter_records(sub)


def _normalize_generator_kwargs(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map StyleGAN3-repo StyleGAN2 kwargs onto the StyleGAN2-ADA signature.

    The StyleGAN3 repo's `networks_stylegan2.Generator` takes synthesis options flat (`**synthesis_kwargs`)
    and adds `fused_modconv_default`, a speed switch that does not change the weights or the math.
    """
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    kwargs = dict(kwargs)
    synthesis_kwargs = dict(kwargs.pop("synthesis_kwargs", None) or {})
    for key in [k for k in kwargs if k not in params]:
        synthesis_kwargs[key] = kwargs.pop(key)
    synthesis_kwargs.pop("fused_modconv_default", None)
    kwargs["synthesis_kwargs"] = synthesis_kwargs
    return kwargs


_NETWORK_CLASSES = ("Generator", "Discriminator")
ALIAS_FREE_GENERATOR = "StyleGAN3Generator"  # snapshot registry name of the StyleGAN3 generator


def _project_class_name(record: PersistentRecord, key: str) -> str:
    """This project's registry name for an official network record.

    Both official generator families are called "Generator"; the alias-free one is recognised by its
    Fourier-feature input module. A record whose embedded source defines StyleGAN3's classes but whose
    tree has no such input is contradictory and refused rather than guessed at.
    """
    if record.class_name != "Generator":
        return record.class_name
    if any(getattr(r, "class_name", "") == "SynthesisInput" for r in _iter_records(record)):
        return ALIAS_FREE_GENERATOR
    if record.alias_free:
        raise UnsupportedPickleError(
            f"{key}: the embedded source is StyleGAN3's alias-free networks, but the Generator has no "
            "SynthesisInput module; cannot tell which architecture the weights belong to"
        )
    return "Generator"


def network_from_record(record: Any, key: str) -> torch.nn.Module:
    """Rebuild `G`/`D`/`G_ema` from its record with this project's class and load its weights strictly."""
    if not isinstance(record, PersistentRecord):
        raise UnsupportedPickleError(f"{key}: expected a persistent network object, got {type(record).__name__}")
    if record.class_name not in _NETWORK_CLASSES:
        raise UnsupportedPickleError(
            f"{key}: class {record.class_name!r} is not a StyleGAN2/StyleGAN3 Generator or Discriminator"
        )
    class_name = _project_class_name(record, key)
    cls = lookup_class(class_name)
    if cls is None:
        raise UnsupportedPickleError(f"{key}: no {class_name} class registered in this project")
    args = _plain(record.state.get("_init_args", ()))
    kwargs = _plain(record.state.get("_init_kwargs", {}))
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise UnsupportedPickleError(f"{key}: missing or malformed _init_args/_init_kwargs in the pickle")
    if class_name == "Generator":
        kwargs = _normalize_generator_kwargs(cls, kwargs)
    try:
        module = cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UnsupportedPickleError(f"{key}: cannot build {class_name} from the pickled kwargs: {exc}") from exc
    load_state_strict(module, collect_state(record), what=f"{key} ({class_name})")
    return module.cpu().eval().requires_grad_(False)


def augment_from_record(record: Any) -> Any:
    """An official AugmentPipe: this project's AugmentPipe once it exists, else a tensor group dict.

    The group `{'class_name', 'init_kwargs', 'state_dict'}` keeps the probabilities and filters it was
    trained with (buffer `p` in particular), and `models.serialization.snapshot` stores it as-is.
    """
    if record is None:
        return None
    if not isinstance(record, PersistentRecord) or record.class_name != "AugmentPipe":
        raise UnsupportedPickleError(f"augment_pipe: unexpected object {getattr(record, 'class_name', type(record))}")
    kwargs = _plain(record.state.get("_init_kwargs", {}))
    if record.state.get("_init_args"):
        # The official training loop always passes keyword arguments; positional ones cannot be named safely.
        raise UnsupportedPickleError("augment_pipe: positional constructor arguments are not supported")
    state = collect_state(record)
    cls = lookup_class("AugmentPipe")
    if cls is None:
        return {"class_name": "AugmentPipe", "init_kwargs": kwargs, "state_dict": state}
    module = cls(**kwargs)
    load_state_strict(module, state, what="augment_pipe (AugmentPipe)")
    return module.cpu().eval().requires_grad_(False)


def load_official_pickle(f: IO[bytes] | str | os.PathLike) -> dict[str, Any]:
    """Import an official network pickle: {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}.

    No code stored in the pickle is executed; see the module docstring.
    """
    try:
        if isinstance(f, (str, os.PathLike)):
            with open(f, "rb") as fh:
                data = restricted_load(fh)
        else:
            data = restricted_load(f)
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        # A crash mid-write (the official loop writes snapshots in place) leaves exactly this.
        raise UnsupportedPickleError(f"truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, tuple) and len(data) == 3:
        # (G, D, Gs) tuples are how TF pickles are laid out; the Network global is refused earlier, so
        # this only triggers for oddly formed files.
        raise UnsupportedPickleError("TensorFlow-style (G, D, Gs) tuple pickles are not supported yet")
    if not isinstance(data, dict):
        raise UnsupportedPickleError(f"expected a dict of networks at the top level, got {type(data).__name__}")
    missing = [k for k in ("G", "D", "G_ema") if k not in data]
    if missing:
        raise UnsupportedPickleError(f"network pickle lacks {', '.join(missing)}")
    result: dict[str, Any] = {k: network_from_record(data[k], k) for k in ("G", "D", "G_ema")}
    result["augment_pipe"] = augment_from_record(data.get("augment_pipe"))
    tsk = data.get("training_set_kwargs")
    result["training_set_kwargs"] = _plain(tsk) if isinstance(tsk, Mapping) else None
    return result
