"""MLflow: log the serving graph as a pyfunc model, register it, point an alias at the new version.

The pyfunc runs onnxruntime on the logged `generator_uint8.onnx` artifact. Input: a DataFrame with
`seed` (int; z by the official seed rule) and optionally `truncation_psi` (float) and `class_idx` (int,
conditional networks); output: uint8 images [N, H, W, C]. Versions are addressed by alias
(`models:/<name>@champion`), not by the deprecated registry stages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd


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


def register_generator(
    onnx_path: str | os.PathLike,
    model_name: str,
    alias: str = "champion",
    c_dim: int = 0,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    artifacts: list[str | os.PathLike] | None = None,
    experiment: str = "export",
) -> dict[str, Any]:
    """Log + register + alias within one run; returns {'run_id', 'version', 'uri'}.

    Uses the current tracking URI (MLFLOW_TRACKING_URI, else the project's sqlite default set by the caller).
    """
    # Inside a pipeline run (the Prefect flow), the registration is a child of the active run.
    nested = mlflow.active_run() is not None
    if not nested:
        mlflow.set_experiment(experiment)
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
            # Explicit requirements: inferring them would import-scan the whole environment (slow).
            pip_requirements=["onnxruntime", "numpy", "pandas", "mlflow"],
            registered_model_name=model_name,
        )
        version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(model_name, alias, version)
    return {"run_id": run.info.run_id, "version": version, "uri": f"models:/{model_name}@{alias}"}
