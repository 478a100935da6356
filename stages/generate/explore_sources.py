"""What `explore --network` names, resolved to files: a snapshot or pickle, a training run folder (its snapshots
for the picker), a published network's name or URL, or an MLflow registry URI (`models:/name@alias`,
`models:/name/3`).

A registry version holds the ONNX serving graph the export stage logged (seed, psi, class in; uint8 image out),
and its registering run's params name the network it was exported from (`export.network`). The explorer wants
the PyTorch generator (mapping, style mixing, StyleGAN3 transforms), so it takes that snapshot when it is still
on this machine: the file itself, or for a run folder the newest snapshot written before the version was
registered. Otherwise it renders the version's own ONNX graph, with the controls that graph has.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from models.serialization.loading import is_url, pretrained_url, resolve_network_path
from stages.generate.config import GenerateError

# The loader's rule for a run folder's snapshots (models.serialization.loading picks the newest of these).
SNAPSHOT_NAME = re.compile(r"^network-snapshot-(\d+(?:\.\d+)?)\.(safetensors|pkl)$")
REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclasses.dataclass
class Source:
    """One network of the page: what was asked for, and the files that can be rendered from it."""

    spec: str                             # as given on the command line
    kind: str                             # file | run | registry | onnx
    files: dict[str, Path]                # snapshot name -> path (one entry unless a run folder)
    default: str                          # the name rendered unless the page picks another
    folder: Path | None = None            # a run folder, listed again when the page asks (training may go on)
    note: str = ""                        # how a registry URI was resolved, shown on the page

    def refresh(self) -> None:
        """Re-list a run folder's snapshots (training may have written more since the page opened)."""
        if self.folder is not None:
            self.files = list_snapshots(self.folder) or self.files

    def path(self, name: str | None) -> Path:
        """The file of snapshot `name` (None: the default); only names this source listed are valid."""
        name = self.default if name in (None, "") else name
        if name not in self.files:
            self.refresh()
        if name not in self.files:
            raise KeyError(name)
        return self.files[name]


def snapshot_kimg(name: str) -> float | None:
    m = SNAPSHOT_NAME.match(name)
    return float(m[1]) if m else None


def list_snapshots(folder: Path) -> dict[str, Path]:
    """network-snapshot-<kimg>.* of a run folder, oldest first (the loader's naming rule)."""
    found = sorted((snapshot_kimg(f.name), f.name) for f in folder.iterdir() if snapshot_kimg(f.name) is not None)
    return {name: folder / name for _, name in found}


def resolve_source(spec: str) -> Source:
    """`spec` -> Source, or GenerateError with one line that says what is wrong."""
    spec = str(spec).strip()
    if spec.startswith("models:/"):
        return resolve_registry(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = list_snapshots(path)
        if not files:
            raise GenerateError(f"--network {spec}: no network-snapshot-*.safetensors|pkl in this run folder")
        return Source(spec, "run", files, list(files)[-1], folder=path)
    if path.suffix == ".onnx" and path.is_file():
        return Source(spec, "onnx", {path.name: path}, path.name)
    if is_url(spec) or (not path.exists() and pretrained_url(spec) is not None):
        return Source(spec, "file", {spec: Path(resolve_network_path(spec))}, spec)  # fetched when loaded
    if not path.is_file():
        raise GenerateError(f"--network {spec}: no such file or folder")
    return Source(spec, "file", {path.name: path}, path.name)


def resolve_registry(uri: str) -> Source:
    """`models:/name@alias` or `models:/name/<version>` through the MLflow registry (MLFLOW_TRACKING_URI, else
    the project's sqlite:///mlflow.db)."""
    m = REGISTRY_URI.match(uri)
    if m is None:
        raise GenerateError(f"--network {uri}: a registry URI is models:/NAME@ALIAS or models:/NAME/VERSION")
    import mlflow

    from stages.common.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    try:
        mv = (client.get_model_version_by_alias(m["name"], m["alias"]) if m["alias"]
              else client.get_model_version(m["name"], m["version"]))
    except mlflow.exceptions.MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GenerateError(f"--network {uri}: not in the registry at {tracking_uri()} ({first[:160]})") from None
    snapshot = exported_snapshot(client, mv)
    label = f"{m['name']} v{mv.version}" + (f" @{m['alias']}" if m["alias"] else "")
    if snapshot is not None:
        return Source(uri, "registry", {snapshot.name: snapshot}, snapshot.name,
                      note=f"{label}: PyTorch generator from {snapshot}")
    from mlflow.artifacts import download_artifacts

    try:
        local = Path(download_artifacts(f"models:/{m['name']}/{mv.version}"))
    except Exception as exc:  # MLflow raises several types for a missing or unreadable artifact store
        raise GenerateError(f"--network {uri}: cannot fetch the model's files ({type(exc).__name__}: "
                            f"{str(exc)[:120]})") from None
    graphs = sorted(local.rglob("generator_uint8.onnx")) or sorted(local.rglob("*.onnx"))
    if not graphs:
        raise GenerateError(f"--network {uri}: version {mv.version} holds no ONNX graph")
    return Source(uri, "onnx", {graphs[0].name: graphs[0]}, graphs[0].name,
                  note=f"{label}: its ONNX graph (the snapshot it was exported from is not on this machine)")


def exported_snapshot(client: Any, mv: Any) -> Path | None:
    """The snapshot a model version was exported from, when this machine still has it (see the module doc)."""
    try:
        params = client.get_run(mv.run_id).data.params if mv.run_id else {}
    except Exception:  # a run deleted from the store: fall back to the graph
        return None
    network = params.get("export.network") or params.get("network")
    if not network:
        return None
    path = Path(network)
    if path.is_file():
        return path
    if path.is_dir():
        registered = float(mv.creation_timestamp or 0) / 1e3  # ms -> s
        before = [p for p in list_snapshots(path).values() if p.stat().st_mtime <= registered + 1]
        return before[-1] if before else None
    return None
