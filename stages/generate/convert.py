"""`convert`: TensorFlow or PyTorch StyleGAN2(-ADA) network pickle -> native .safetensors snapshot."""

from __future__ import annotations

import os
from pathlib import Path


def convert_network(source: str, dest: str | os.PathLike, cache_dir: str | None = None) -> list[Path]:
    """Read `source` (path or URL) without executing pickled code and write a snapshot to `dest`.

    TensorFlow pickles (`dnnlib.tflib.network.Network` objects) go through `models.serialization.tf_pickle`; anything
    else through `models.load_network` (native snapshots, official PyTorch pickles).
    """
    from models.serialization.loading import _is_url, fetch_url, load_network
    from models.serialization.snapshot import save_snapshot
    from models.serialization.tf_pickle import is_tf_pickle, load_tf_network

    path = fetch_url(source, cache_dir) if _is_url(source) else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"network file not found: {path}")
    if is_tf_pickle(path):
        nets, kind = load_tf_network(path), "tensorflow"
    else:
        nets, kind = load_network(path), "pytorch"
    groups = {k: nets.get(k) for k in ("G", "D", "G_ema", "augment_pipe") if k in nets}
    save_snapshot(dest, groups, training_set_kwargs=nets.get("training_set_kwargs"),
                  meta={"converted_from": str(source), "source_format": kind})
    return [Path(dest)]
