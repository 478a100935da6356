"""MLflow model registry: log the serving graph as a pyfunc model, register a version, and move aliases by
a quality rule.

The pyfunc runs onnxruntime on the logged `generator_uint8.onnx` artifact. Input: a DataFrame with `seed`
(int; z by the official seed rule) and optionally `truncation_psi` (float, default 1) and `class_idx` (int,
conditional networks); output: uint8 images [N, H, W, C]. Versions are addressed by alias, not by the
deprecated registry stages:

- every new version becomes `@challenger`;
- it becomes `@champion` only when its quality metric (e.g. `kid500`, lower is better) beats the
  current champion's, or when there is no champion (or none with that metric) yet. A version registered
  without a quality number never replaces a champion that has one.

The version carries tags linking it to the runs that made it (`train_run_id`, `pipeline_run_id`) and its
quality (`quality.<metric>`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

CHALLENGER, CHAMPION = "challenger", "champion"


class GeneratorPyfunc(mlflow.pyfunc.PythonModel):
    """Seeds (+ psi, class) -> uint8 NHWC images through onnxruntime."""

    def load_context(self, context: Any) -> None:
        from stages.export.render import Renderer

        self.renderer = Renderer(context.artifacts["onnx"])

    def __getstate__(self) -> dict[str, Any]:
        # MLflow calls load_context to validate the input example before pickling the model object;
        # the onnxruntime session is rebuilt from the artifact on load, never pickled.
        return {k: v for k, v in self.__dict__.items() if k != "renderer"}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        df = pd.DataFrame(model_input)
        if "seed" not in df:
            raise ValueError("input needs a 'seed' column (and optionally 'truncation_psi', 'class_idx')")
        seeds = [int(s) for s in df["seed"]]
        psi = df["truncation_psi"].astype(np.float32).tolist() if "truncation_psi" in df else 1.0
        cls = df["class_idx"].astype(int).tolist() if "class_idx" in df else None
        return self.renderer.render(seeds, psi, cls)


def input_example(c_dim: int) -> pd.DataFrame:
    example = {"seed": [0, 1], "truncation_psi": [1.0, 0.7]}
    if c_dim > 0:
        example["class_idx"] = [0, min(1, c_dim - 1)]
    return pd.DataFrame(example)


def signature(c_dim: int) -> Any:
    """`seed` required; `truncation_psi` (and `class_idx`) optional, so `predict({"seed": [0, 1]})` works."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    cols = [ColSpec("long", "seed"), ColSpec("double", "truncation_psi", required=False)]
    if c_dim > 0:
        cols.append(ColSpec("long", "class_idx", required=False))
    return ModelSignature(inputs=Schema(cols), outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))]))


def is_better(new: float | None, old: float | None, lower_is_better: bool) -> bool:
    """Whether quality `new` should replace `old` (None = unknown: never replaces a known value)."""
    if new is None or not math.isfinite(new):
        return old is None
    if old is None or not math.isfinite(old):
        return True
    return new < old if lower_is_better else new > old


def register_generator(
    onnx_path: str | os.PathLike,
    model_name: str,
    c_dim: int = 0,
    quality: tuple[str, float | None, bool] | None = None,  # (metric, value, lower_is_better)
    links: dict[str, str] | None = None,                    # tags tying the version to its runs
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    artifacts: list[str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Log + register within one run (nested when a run is active), then move the aliases; returns
    {'run_id', 'version', 'uri', 'aliases', 'champion'}. Uses the current tracking URI and experiment."""
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=f"register-{model_name}", nested=nested) as run:
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        if metrics:
            mlflow.log_metrics(metrics)
        for path in artifacts or []:
            if Path(path).exists():
                mlflow.log_artifact(str(path), artifact_path="export")
        info = mlflow.pyfunc.log_model(
            name="generator",
            python_model=GeneratorPyfunc(),
            artifacts={"onnx": str(onnx_path)},
            input_example=input_example(c_dim),
            signature=signature(c_dim),
            # Explicit requirements: inferring them would import-scan the whole environment (slow).
            pip_requirements=["onnxruntime", "numpy", "pandas", "mlflow"],
            registered_model_name=model_name,
        )
        version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = dict(links or {})
    if quality is not None and quality[1] is not None:
        tags[f"quality.{quality[0]}"] = repr(float(quality[1]))
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    aliases = promote(client, model_name, version, quality)
    return {"run_id": run.info.run_id, "version": version, "uri": f"models:/{model_name}@{aliases[-1]}",
            "aliases": aliases, "champion": CHAMPION in aliases}


def promote(client: Any, model_name: str, version: str, quality: tuple[str, float | None, bool] | None) -> list[str]:
    """`@challenger` -> `version`; `@champion` too when it beats the current champion. Returns its aliases."""
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    try:
        current = client.get_model_version_by_alias(model_name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None and quality is not None:
        raw = (current.tags or {}).get(f"quality.{quality[0]}")
        old = float(raw) if raw is not None else None
        better = is_better(quality[1], old, quality[2])
    else:
        better = current is None
    if better:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        return [CHALLENGER, CHAMPION]
    return [CHALLENGER]
