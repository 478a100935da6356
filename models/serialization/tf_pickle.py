"""Import of TensorFlow StyleGAN2 / StyleGAN2-ADA network pickles, without running any code they carry.

A TF snapshot is `pickle.dump((G, D, Gs))` of three `dnnlib.tflib.network.Network` objects. Each one
pickles as "make a Network, then `__setstate__(state)`" with `state = {'version', 'name',
'static_kwargs', 'components', 'variables', 'build_module_src', 'build_func_name', ...}`: the
constructor kwargs, sub-networks (G: mapping + synthesis), the variables as `(tf_name, ndarray)`
pairs, and the source of the module that built the graph (which TF would exec; we never do).

`TFUnpickler` resolves only an allowlist of globals: `Network` becomes `TFNetworkRecord`, which just
keeps the state; numpy array/dtype reconstruction, `collections.OrderedDict`, and `dnnlib` EasyDicts
(as plain dicts). Any other global is refused by name. The records are then converted like the
official `legacy.py` does: kwargs from `static_kwargs`, and every parameter / buffer of our networks
from one TF variable, transposed to PyTorch layouts ([kh, kw, I, O] -> [O, I, kh, kw]; dense [I, O]
-> [O, I]), the transposed-convolution kernels of the upsampling layers flipped, and the style biases
shifted by +1 (TF adds the 1 at run time, PyTorch stores it in the bias).
"""

from __future__ import annotations

import collections
import os
import pickle
import pickletools
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from models.serialization.official_pickle import (
    UnsafePickleError,
    UnsupportedPickleError,
    _codecs_encode,
    _numpy_reconstruct,
    _numpy_scalar,
    _plain,
)
from models.serialization.snapshot import load_state_strict

TF_NETWORK_GLOBAL = ("dnnlib.tflib.network", "Network")
MIN_TF_VERSION = 4  # network pickles of StyleGAN2 and StyleGAN2-ADA (TF); StyleGAN1 is older


class TFNetworkRecord:
    """Stand-in for `dnnlib.tflib.network.Network`: records the pickled state, executes nothing."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsupportedPickleError(f"TF network state is {type(state).__name__}, expected a dict")
        self.state = state

    @property
    def name(self) -> str:
        return str(self.state.get("name", "?"))

    @property
    def version(self) -> int:
        return int(self.state.get("version", -1))

    @property
    def static_kwargs(self) -> dict[str, Any]:
        return _plain(dict(self.state.get("static_kwargs") or {}))

    @property
    def components(self) -> dict[str, TFNetworkRecord]:
        return dict(self.state.get("components") or {})

    @property
    def variables(self) -> list[tuple[str, np.ndarray]]:
        return list(self.state.get("variables") or [])


def _numpy_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # How numpy pickles arrays with protocol 5; object arrays could smuggle arbitrary pickled objects.
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy array of dtype {dtype!r} is not allowed")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


# (module, name) -> object. Nothing outside this table is ever imported or called.
_ALLOWED: dict[tuple[str, str], Any] = {
    TF_NETWORK_GLOBAL: TFNetworkRecord,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("_codecs", "encode"): _codecs_encode,
}


class TFUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` resolving only `_ALLOWED`; anything else is refused, naming the global."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': not in the TF network-pickle allowlist"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}: not a TF network pickle")


def is_tf_pickle(path: str | os.PathLike, scan_limit: int = 64) -> bool:
    """Whether the pickle's first global is `dnnlib.tflib.network.Network`, read from opcodes only.

    Only the first `scan_limit` opcodes are looked at: a TF snapshot names the Network class at once.
    """
    with open(path, "rb") as fh:
        strings: list[str] = []
        try:
            for i, (op, arg, _) in enumerate(pickletools.genops(fh)):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                    strings.append(arg)
                elif op.name == "GLOBAL":
                    return tuple(str(arg).split(" ", 1)) == TF_NETWORK_GLOBAL
                elif op.name == "STACK_GLOBAL":
                    return tuple(strings[-2:]) == TF_NETWORK_GLOBAL
                if i >= scan_limit:
                    return False
        except (ValueError, EOFError):  # not a pickle, or truncated: let the main loader report it
            return False
    return False


def collect_tf_params(net: TFNetworkRecord, prefix: str = "") -> dict[str, np.ndarray]:
    """All variables of `net` and its components, named 'component/.../var' as the official converter does."""
    out: dict[str, np.ndarray] = {}
    for name, value in net.variables:
        out[prefix + str(name)] = np.asarray(value)
    for name, comp in net.components.items():
        if not isinstance(comp, TFNetworkRecord):
            raise UnsupportedPickleError(f"{prefix}{name}: component is {type(comp).__name__}, not a TF network")
        out.update(collect_tf_params(comp, f"{prefix}{name}/"))
    return out


class _Kwargs:
    """Reads TF static kwargs with defaults and remembers which ones were understood."""

    def __init__(self, tf_kwargs: dict[str, Any], what: str) -> None:
        self.tf_kwargs, self.what, self.known = tf_kwargs, what, set()

    def __call__(self, name: str, default: Any = None, none: Any = None) -> Any:
        self.known.add(name)
        value = self.tf_kwargs.get(name, default)
        return value if value is not None else none

    def check(self, *ignored: str) -> None:
        self.known.update(ignored)
        unknown = sorted(set(self.tf_kwargs) - self.known)
        if unknown:
            raise UnsupportedPickleError(f"{self.what}: unknown TensorFlow kwarg {unknown[0]!r} (configuration not "
                                         "supported: only StyleGAN2 config-e/f and StyleGAN2-ADA networks)")


# Value transforms TF layout -> PyTorch layout.
def _dense(v: np.ndarray) -> np.ndarray:
    return v.transpose()                        # [I, O] -> [O, I]


def _conv(v: np.ndarray) -> np.ndarray:
    return v.transpose(3, 2, 0, 1)              # [kh, kw, I, O] -> [O, I, kh, kw]


def _conv_flip(v: np.ndarray) -> np.ndarray:
    # TF's upsampling conv is a transposed convolution: its kernel is the spatial flip of ours.
    return v[::-1, ::-1].transpose(3, 2, 0, 1)


def _style_bias(v: np.ndarray) -> np.ndarray:
    return v + 1                                # TF adds 1 to the styles at run time


Rule = tuple[str, Callable[..., tuple[str, Callable[[np.ndarray], np.ndarray]] | None]]


def _noise(idx_of: Callable[[int], int]) -> Callable[[str], tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    return lambda r: (f"synthesis/noise{idx_of(int(r))}", lambda v: v[0, 0])  # [11HW] -> [HW]


def _log2(r: int) -> int:
    return int(np.log2(r))


# Our state_dict name (regex) -> (TF variable name, transform); None = keep ours (derived from kwargs).
G_RULES: list[Rule] = [
    (r"mapping\.w_avg", lambda: ("dlatent_avg", np.asarray)),
    (r"mapping\.embed\.weight", lambda: ("mapping/LabelEmbed/weight", _dense)),
    (r"mapping\.embed\.bias", lambda: ("mapping/LabelEmbed/bias", np.asarray)),
    (r"mapping\.fc(\d+)\.weight", lambda i: (f"mapping/Dense{i}/weight", _dense)),
    (r"mapping\.fc(\d+)\.bias", lambda i: (f"mapping/Dense{i}/bias", np.asarray)),
    (r"synthesis\.b4\.const", lambda: ("synthesis/4x4/Const/const", lambda v: v[0])),
    (r"synthesis\.b4\.conv1\.weight", lambda: ("synthesis/4x4/Conv/weight", _conv)),
    (r"synthesis\.b4\.conv1\.bias", lambda: ("synthesis/4x4/Conv/bias", np.asarray)),
    (r"synthesis\.b4\.conv1\.noise_const", lambda: ("synthesis/noise0", lambda v: v[0, 0])),
    (r"synthesis\.b4\.conv1\.noise_strength", lambda: ("synthesis/4x4/Conv/noise_strength", np.asarray)),
    (r"synthesis\.b4\.conv1\.affine\.weight", lambda: ("synthesis/4x4/Conv/mod_weight", _dense)),
    (r"synthesis\.b4\.conv1\.affine\.bias", lambda: ("synthesis/4x4/Conv/mod_bias", _style_bias)),
    (r"synthesis\.b(\d+)\.conv0\.weight", lambda r: (f"synthesis/{r}x{r}/Conv0_up/weight", _conv_flip)),
    (r"synthesis\.b(\d+)\.conv0\.bias", lambda r: (f"synthesis/{r}x{r}/Conv0_up/bias", np.asarray)),
    (r"synthesis\.b(\d+)\.conv0\.noise_const", _noise(lambda r: _log2(r) * 2 - 5)),
    (r"synthesis\.b(\d+)\.conv0\.noise_strength", lambda r: (f"synthesis/{r}x{r}/Conv0_up/noise_strength", np.asarray)),
    (r"synthesis\.b(\d+)\.conv0\.affine\.weight", lambda r: (f"synthesis/{r}x{r}/Conv0_up/mod_weight", _dense)),
    (r"synthesis\.b(\d+)\.conv0\.affine\.bias", lambda r: (f"synthesis/{r}x{r}/Conv0_up/mod_bias", _style_bias)),
    (r"synthesis\.b(\d+)\.conv1\.weight", lambda r: (f"synthesis/{r}x{r}/Conv1/weight", _conv)),
    (r"synthesis\.b(\d+)\.conv1\.bias", lambda r: (f"synthesis/{r}x{r}/Conv1/bias", np.asarray)),
    (r"synthesis\.b(\d+)\.conv1\.noise_const", _noise(lambda r: _log2(r) * 2 - 4)),
    (r"synthesis\.b(\d+)\.conv1\.noise_strength", lambda r: (f"synthesis/{r}x{r}/Conv1/noise_strength", np.asarray)),
    (r"synthesis\.b(\d+)\.conv1\.affine\.weight", lambda r: (f"synthesis/{r}x{r}/Conv1/mod_weight", _dense)),
    (r"synthesis\.b(\d+)\.conv1\.affine\.bias", lambda r: (f"synthesis/{r}x{r}/Conv1/mod_bias", _style_bias)),
    (r"synthesis\.b(\d+)\.torgb\.weight", lambda r: (f"synthesis/{r}x{r}/ToRGB/weight", _conv)),
    (r"synthesis\.b(\d+)\.torgb\.bias", lambda r: (f"synthesis/{r}x{r}/ToRGB/bias", np.asarray)),
    (r"synthesis\.b(\d+)\.torgb\.affine\.weight", lambda r: (f"synthesis/{r}x{r}/ToRGB/mod_weight", _dense)),
    (r"synthesis\.b(\d+)\.torgb\.affine\.bias", lambda r: (f"synthesis/{r}x{r}/ToRGB/mod_bias", _style_bias)),
    (r"synthesis\.b(\d+)\.skip\.weight", lambda r: (f"synthesis/{r}x{r}/Skip/weight", _conv_flip)),
    (r".*\.resample_filter", lambda *_: None),
]

D_RULES: list[Rule] = [
    (r"b(\d+)\.fromrgb\.weight", lambda r: (f"{r}x{r}/FromRGB/weight", _conv)),
    (r"b(\d+)\.fromrgb\.bias", lambda r: (f"{r}x{r}/FromRGB/bias", np.asarray)),
    (r"b(\d+)\.conv(\d+)\.weight", lambda r, i: (f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/weight", _conv)),
    (r"b(\d+)\.conv(\d+)\.bias", lambda r, i: (f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/bias", np.asarray)),
    (r"b(\d+)\.skip\.weight", lambda r: (f"{r}x{r}/Skip/weight", _conv)),
    (r"mapping\.embed\.weight", lambda: ("LabelEmbed/weight", _dense)),
    (r"mapping\.embed\.bias", lambda: ("LabelEmbed/bias", np.asarray)),
    (r"mapping\.fc(\d+)\.weight", lambda i: (f"Mapping{i}/weight", _dense)),
    (r"mapping\.fc(\d+)\.bias", lambda i: (f"Mapping{i}/bias", np.asarray)),
    (r"b4\.conv\.weight", lambda: ("4x4/Conv/weight", _conv)),
    (r"b4\.conv\.bias", lambda: ("4x4/Conv/bias", np.asarray)),
    (r"b4\.fc\.weight", lambda: ("4x4/Dense0/weight", _dense)),
    (r"b4\.fc\.bias", lambda: ("4x4/Dense0/bias", np.asarray)),
    (r"b4\.out\.weight", lambda: ("Output/weight", _dense)),
    (r"b4\.out\.bias", lambda: ("Output/bias", np.asarray)),
    (r".*\.resample_filter", lambda *_: None),
]


def _populate(module: torch.nn.Module, rules: list[Rule], tf_params: dict[str, np.ndarray], what: str) -> None:
    """Fill every parameter / persistent buffer of `module` from its TF variable, strictly."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        match = next(((m, fn) for pattern, fn in rules if (m := re.fullmatch(pattern, name))), None)
        if match is None:
            raise UnsupportedPickleError(f"{what}: no TensorFlow variable maps to parameter {name!r}")
        found = match[1](*match[0].groups())
        if found is None:
            state[name] = tensor
            continue
        tf_name, transform = found
        if tf_name not in tf_params:
            raise UnsupportedPickleError(f"{what}: TensorFlow variable {tf_name!r} (for {name}) is missing")
        # np.array, not ascontiguousarray: the latter turns 0-d variables (noise_strength) into shape [1].
        value = np.array(transform(np.asarray(tf_params[tf_name])), dtype=np.float32, order="C")
        if tuple(value.shape) != tuple(tensor.shape):
            raise UnsupportedPickleError(
                f"{what}: {tf_name} has shape {list(value.shape)} after conversion, {name} needs {list(tensor.shape)}"
            )
        state[name] = torch.from_numpy(value).to(tensor.dtype)
    load_state_strict(module, state, what=what)


def _lod_to_resolution(tf_params: dict[str, np.ndarray], prefix: str, layer: str, resolution: int) -> bool:
    """Rename progressive-growing `<prefix>XXX_lodN/...` variables (config-e 'orig' nets) to `<prefix>RxR/XXX/...`."""
    found = False
    for name, value in list(tf_params.items()):
        m = re.fullmatch(rf"{re.escape(prefix)}{layer}_lod(\d+)/(.*)", name)
        if m:
            r = resolution // (2 ** int(m.group(1)))
            tf_params[f"{prefix}{r}x{r}/{layer}/{m.group(2)}"] = value
            found = True
    return found


def convert_tf_generator(tf_G: TFNetworkRecord, what: str = "G") -> torch.nn.Module:
    from models.stylegan2.generator import Generator

    if tf_G.version < MIN_TF_VERSION:
        raise UnsupportedPickleError(f"{what}: TensorFlow network version {tf_G.version} is too old (StyleGAN1?)")
    kw = _Kwargs(tf_G.static_kwargs, what)
    kwargs: dict[str, Any] = dict(
        z_dim=kw("latent_size", 512),
        c_dim=kw("label_size", 0),
        w_dim=kw("dlatent_size", 512),
        img_resolution=kw("resolution", 1024),
        img_channels=kw("num_channels", 3),
        mapping_kwargs=dict(
            num_layers=kw("mapping_layers", 8),
            embed_features=kw("label_fmaps", None),
            layer_features=kw("mapping_fmaps", None),
            activation=kw("mapping_nonlinearity", "lrelu"),
            lr_multiplier=kw("mapping_lrmul", 0.01),
            w_avg_beta=kw("w_avg_beta", 0.995, none=1),
        ),
        synthesis_kwargs=dict(
            channel_base=kw("fmap_base", 16384) * 2,  # TF counts channels as fmap_base / res * 2 ... / 2
            channel_max=kw("fmap_max", 512),
            num_fp16_res=kw("num_fp16_res", 0),
            conv_clamp=kw("conv_clamp", None),
            architecture=kw("architecture", "skip"),
            resample_filter=list(kw("resample_kernel", [1, 3, 3, 1])),
            use_noise=kw("use_noise", True),
            activation=kw("nonlinearity", "lrelu"),
        ),
    )
    # Sampling-time settings stored with the TF net; they do not change the weights.
    kw.check("truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure")

    tf_params = collect_tf_params(tf_G)
    if _lod_to_resolution(tf_params, "synthesis/", "ToRGB", kwargs["img_resolution"]):
        kwargs["synthesis_kwargs"]["architecture"] = "orig"
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UnsupportedPickleError(f"{what}: cannot build a Generator from the TF kwargs: {exc}") from exc
    _populate(G, G_RULES, tf_params, f"{what} (TF {tf_G.name})")
    return G.eval().requires_grad_(False)


def convert_tf_discriminator(tf_D: TFNetworkRecord, what: str = "D") -> torch.nn.Module:
    from models.stylegan2.discriminator import Discriminator

    if tf_D.version < MIN_TF_VERSION:
        raise UnsupportedPickleError(f"{what}: TensorFlow network version {tf_D.version} is too old (StyleGAN1?)")
    kw = _Kwargs(tf_D.static_kwargs, what)
    kwargs: dict[str, Any] = dict(
        c_dim=kw("label_size", 0),
        img_resolution=kw("resolution", 1024),
        img_channels=kw("num_channels", 3),
        architecture=kw("architecture", "resnet"),
        channel_base=kw("fmap_base", 16384) * 2,
        channel_max=kw("fmap_max", 512),
        num_fp16_res=kw("num_fp16_res", 0),
        conv_clamp=kw("conv_clamp", None),
        cmap_dim=kw("mapping_fmaps", None),
        block_kwargs=dict(
            activation=kw("nonlinearity", "lrelu"),
            resample_filter=list(kw("resample_kernel", [1, 3, 3, 1])),
            freeze_layers=kw("freeze_layers", 0),
        ),
        mapping_kwargs=dict(
            num_layers=kw("mapping_layers", 0),
            embed_features=kw("mapping_fmaps", None),
            layer_features=kw("mapping_fmaps", None),
            activation=kw("nonlinearity", "lrelu"),
            lr_multiplier=kw("mapping_lrmul", 0.1),
        ),
        # An absent group size becomes None (whole minibatch), as the official converter does.
        epilogue_kwargs=dict(
            mbstd_group_size=kw("mbstd_group_size", None),
            mbstd_num_channels=kw("mbstd_num_features", 1),
            activation=kw("nonlinearity", "lrelu"),
        ),
    )
    kw.check("structure")

    tf_params = collect_tf_params(tf_D)
    if _lod_to_resolution(tf_params, "", "FromRGB", kwargs["img_resolution"]):
        kwargs["architecture"] = "orig"
    try:
        D = Discriminator(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UnsupportedPickleError(f"{what}: cannot build a Discriminator from the TF kwargs: {exc}") from exc
    _populate(D, D_RULES, tf_params, f"{what} (TF {tf_D.name})")
    return D.eval().requires_grad_(False)


def load_tf_pickle(f: IO[bytes]) -> tuple[TFNetworkRecord, TFNetworkRecord, TFNetworkRecord]:
    try:
        data = TFUnpickler(f).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        raise UnsupportedPickleError(f"truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetworkRecord) for n in data)):
        raise UnsupportedPickleError("expected a (G, D, Gs) tuple of TensorFlow networks at the top level")
    return data


def load_tf_network(path: str | os.PathLike | IO[bytes]) -> dict[str, Any]:
    """{'G', 'D', 'G_ema', 'augment_pipe': None, 'training_set_kwargs': None} from a TF network pickle."""
    if isinstance(path, (str, os.PathLike)):
        with open(Path(path), "rb") as fh:
            tf_G, tf_D, tf_Gs = load_tf_pickle(fh)
    else:
        tf_G, tf_D, tf_Gs = load_tf_pickle(path)
    return {
        "G": convert_tf_generator(tf_G, "G"),
        "D": convert_tf_discriminator(tf_D, "D"),
        "G_ema": convert_tf_generator(tf_Gs, "G_ema"),
        "augment_pipe": None,
        "training_set_kwargs": None,
    }
