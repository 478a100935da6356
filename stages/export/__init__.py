"""export: trained generators for serving: ONNX (fp32/fp16, uint8 head), parity with PyTorch, TensorRT
engine build (+ trtexec script), Triton model repository, MLflow registration, a seed renderer.

Modules: `wrappers` (export modules, psi as input), `onnx_export`, `parity`, `tensorrt_build`, `triton`,
`render` (seeds -> PNGs through a graph or engine), `registry` (MLflow), `exporter` (`export_all`, the
stage), `config` (`ExportConfig`), `cli`.
"""
