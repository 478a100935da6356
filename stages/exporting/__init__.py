"""Export of trained generators for serving: ONNX (fp32/fp16, uint8 head), parity with PyTorch,
TensorRT engine build (+ trtexec script), Triton model repository, MLflow registration, a seed renderer.

Submodules: `wrappers` (export modules, psi as input), `onnx_export`, `parity`, `tensorrt_build`,
`triton`, `runner`, `registry` (imports mlflow), `pipeline` (`export_all`), `config` (`ExportConfig`).
"""

from stages.exporting.config import ExportConfig
from stages.exporting.pipeline import ParityError, export_all

__all__ = ["ExportConfig", "ParityError", "export_all"]
