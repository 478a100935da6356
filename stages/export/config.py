"""`export:` section of params.yaml as a frozen dataclass (defaults = the proposed params section)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from stages.common.config import ConfigError

TRITON_KINDS = ("KIND_GPU", "KIND_CPU")
OPENVINO_PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    SECTION: ClassVar[str] = "export"

    network: str = ""                         # snapshot / official pickle / URL holding G_ema
    outdir: str = "exports"                   # all artifacts go here (written atomically)
    opset: int = 18                           # ONNX opset (>= 17; the dynamo exporter emits 18)
    truncation_cutoff: int | None = None      # psi applies to the first N ws only; None = all (official)
    fp16: bool = False                        # also write *_fp16.onnx (float16 inside, float32 IO)
    simplify: bool = False                    # onnxslim where installed and it removes nodes; parity re-run
    batch_min: int = 1                        # TensorRT profile / Triton batching range
    batch_opt: int = 8
    batch_max: int = 32
    engine: bool = False                      # build a TensorRT engine here (needs tensorrt + CUDA GPU)
    engine_fp16: bool = True                  # TensorRT FP16 kernels (trtexec --fp16)
    workspace_mb: int = 4096                  # TensorRT workspace memory pool
    parity_batches: tuple[int, ...] = (1, 3, 8)
    parity_psi: tuple[float, ...] = (1.0, 0.7, 0.5)
    parity_tol: float = 1e-3                  # fp32 max abs error gate (image units, [-1, 1])
    openvino: bool = True                     # also write OpenVINO IR generator[_uint8].xml/.bin (CPU deployment)
    openvino_precisions: tuple[str, ...] = ("fp32", "bf16")  # IR compiled and parity-checked in each
    openvino_bf16_psnr: float = 30.0          # bf16 gate: min PSNR (dB) vs PyTorch fp32 (fp32 is gated by parity_tol)
    triton_name: str = "stylegan2_generator"  # model name in the Triton repository
    triton_instance_kind: str = "KIND_GPU"    # KIND_GPU | KIND_CPU (a plan is always KIND_GPU)
    triton_max_queue_delay_us: int = 100      # dynamic batching: wait at most this for a fuller batch
    mlflow: bool = False                      # log parity figures and the graphs to MLflow (also SG2_MLFLOW=1)
    register: bool = False                    # register the serving graph (@challenger; @champion if better)
    registered_model: str = "stylegan2-generator"
    quality_metric: str = "kid500"        # decides @champion: read from `metrics_file` (evaluate's output)
    metrics_file: str = "metrics.json"
    dry_run: bool = False                     # print the resolved config and exit

    def __post_init__(self) -> None:
        if not self.network:
            raise ConfigError("export.network is required (a snapshot, official pickle or URL)")
        if self.opset < 17:
            raise ConfigError("export.opset must be >= 17")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise ConfigError("export: need 1 <= batch_min <= batch_opt <= batch_max")
        if self.truncation_cutoff is not None and self.truncation_cutoff < 0:
            raise ConfigError("export.truncation_cutoff must be >= 0 or null")
        if not self.parity_batches or min(self.parity_batches) < 1:
            raise ConfigError("export.parity_batches must be positive batch sizes")
        if not self.parity_psi:
            raise ConfigError("export.parity_psi must not be empty")
        if self.parity_tol <= 0:
            raise ConfigError("export.parity_tol must be > 0")
        if not self.openvino_precisions or set(self.openvino_precisions) - set(OPENVINO_PRECISIONS):
            raise ConfigError(f"export.openvino_precisions must be a non-empty subset of {list(OPENVINO_PRECISIONS)}")
        if not self.openvino_bf16_psnr > 0:
            raise ConfigError("export.openvino_bf16_psnr must be > 0 (dB)")
        if self.workspace_mb < 1:
            raise ConfigError("export.workspace_mb must be >= 1")
        if self.triton_instance_kind not in TRITON_KINDS:
            raise ConfigError(f"export.triton_instance_kind must be one of {TRITON_KINDS}")
        if self.triton_max_queue_delay_us < 0:
            raise ConfigError("export.triton_max_queue_delay_us must be >= 0")
        if not self.triton_name or "/" in self.triton_name:
            raise ConfigError("export.triton_name must be a non-empty name without '/'")
        if not self.registered_model:
            raise ConfigError("export.registered_model must be non-empty")
        from stages.metrics.registry import UnknownMetricError, parse_metric

        try:
            parse_metric(self.quality_metric)
        except UnknownMetricError as exc:
            raise ConfigError(f"export.quality_metric: {exc}") from None


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """`python -m stages.export render`: seeds through an exported graph or engine (not a pipeline step)."""

    SECTION: ClassVar[str] = "render"

    model: str = ""                           # .onnx (onnxruntime), .xml IR (OpenVINO), .plan (TensorRT) or a snapshot
    seeds: str = "0-7"                        # e.g. 0-7,10
    trunc: float = 1.0                        # truncation psi
    class_idx: int | None = None              # class (conditional networks)
    batch: int = 8                            # images per run of the graph
    outdir: str = "out/render"
    cpu: bool = False                         # onnxruntime's CPU provider even when CUDA is available
    precision: Literal["fp32", "bf16"] = "fp32"  # snapshots: bf16 blocks on CPU (models.precision); .xml: OpenVINO hint

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("--model is required (an exported .onnx graph, .xml IR, .plan engine or snapshot)")
        if not 1 <= self.batch <= 4096:
            raise ConfigError("--batch must be in 1..4096")
        from stages.common.seeds import parse_seeds

        parse_seeds(self.seeds)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """`python -m stages.export serve`: a small HTTP server on CPU (not a pipeline step; Triton is the GPU server)."""

    SECTION: ClassVar[str] = "serve"

    model: str = ""                           # generator_uint8.onnx (onnxruntime), .xml (OpenVINO), .plan, snapshot
    host: str = "127.0.0.1"                   # listen address (0.0.0.0 to accept other machines)
    port: int = 8080                          # 0 = any free port (printed at start)
    name: str = "stylegan2_generator"         # model name in the KServe v2 paths, as in the Triton repository
    max_batch: int = 64                       # most images per request and per batched run of the model
    cpu: bool = True                          # onnxruntime's CPU provider
    precision: Literal["fp32", "bf16"] = "fp32"  # snapshots: bf16 blocks on CPU (models.precision); .xml: OpenVINO hint
    batch_window_ms: float = 5.0              # dynamic batching: requests within this window share a run (0 = off)
    max_queue: int = 256                      # images waiting for the model; more are answered 503
    max_connections: int = 64                 # open connections (one thread each); more are answered 503
    timeout_s: float = 30.0                   # idle connections closed; a request queued this long gets 503

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("--model is required (e.g. exports/generator_uint8.onnx)")
        if not 0 <= self.batch_window_ms <= 10_000:
            raise ConfigError("--batch-window-ms must be in 0..10000")
        if not 1 <= self.max_queue <= 1_000_000 or not 1 <= self.max_connections <= 10_000:
            raise ConfigError("--max-queue must be in 1..1000000 and --max-connections in 1..10000")
        if not 0 < self.timeout_s <= 3600:
            raise ConfigError("--timeout-s must be in (0, 3600]")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be in 0..65535")
        if not 1 <= self.max_batch <= 4096:
            raise ConfigError("--max-batch must be in 1..4096")
        if not self.name or "/" in self.name:
            raise ConfigError("--name must be a non-empty name without '/'")


HELP = {
    "network": "snapshot, official pickle, URL or run folder (G_ema is exported)",
    "outdir": "output directory",
    "opset": "ONNX opset, >= 17",
    "truncation_cutoff": "psi applies to the first N ws only",
    "fp16": "also write *_fp16.onnx",
    "simplify": "onnxslim the graphs",
    "batch_min": "TensorRT profile / Triton batching: smallest batch",
    "batch_opt": "TensorRT profile: optimal batch",
    "batch_max": "largest batch (also Triton's max_batch_size)",
    "engine": "build a TensorRT engine here (needs tensorrt and a CUDA GPU)",
    "engine_fp16": "TensorRT FP16 kernels",
    "workspace_mb": "TensorRT workspace pool (MiB)",
    "parity_batches": "batch sizes of the parity check, e.g. 1,3,8",
    "parity_psi": "truncation values of the parity check, e.g. 1,0.7",
    "parity_tol": "fp32 max abs error gate",
    "openvino": "also write the OpenVINO IR (generator.xml, generator_uint8.xml + .bin) and check its parity",
    "openvino_precisions": "precisions the IR is compiled and parity-checked in, e.g. fp32,bf16",
    "openvino_bf16_psnr": "OpenVINO bf16 gate: min PSNR in dB against PyTorch fp32 (fp32 uses parity_tol)",
    "triton_name": "model name in the Triton repository",
    "triton_instance_kind": "KIND_GPU | KIND_CPU",
    "triton_max_queue_delay_us": "dynamic batching: wait at most this for a fuller batch",
    "mlflow": "log parity figures and graphs to MLflow (also SG2_MLFLOW=1)",
    "register": "register the serving graph: @challenger, and @champion when its quality beats the champion's",
    "registered_model": "MLflow registered model name",
    "quality_metric": ("metric deciding @champion (from --metrics-file), e.g. kid500 (Inception: fair across "
                       "families)"),
    "metrics_file": "evaluate's results file holding quality_metric",
    "dry_run": "print the resolved config and exit",
    "model": ".onnx graph (onnxruntime), .xml IR (OpenVINO, CPU), .plan engine (TensorRT) or snapshot (PyTorch)",
    "seeds": "e.g. 0-7,10",
    "trunc": "truncation psi (1 = none)",
    "class_idx": "class index (conditional networks)",
    "batch": "images per run of the graph",
    "cpu": "onnxruntime CPU provider even when CUDA is available",
    "precision": ("snapshots: fp32 (official) or bf16 (synthesis blocks in bfloat16, ~2x faster on AVX-512 BF16 CPUs); "
                  ".xml: OpenVINO's INFERENCE_PRECISION_HINT f32 or bf16"),
    "host": "listen address (127.0.0.1; 0.0.0.0 to accept other machines)",
    "port": "TCP port (0 = any free port, printed at start)",
    "name": "model name in the KServe v2 paths (/v2/models/NAME/infer), as in the Triton repository",
    "max_batch": "most images per request and per batched run of the model",
    "batch_window_ms": "dynamic batching: requests within this window share one run (0 = no batching)",
    "max_queue": "images waiting for the model; more are answered 503",
    "max_connections": "open connections (one thread each); more are answered 503",
    "timeout_s": "idle connections are closed; a request queued this long gets 503 (seconds)",
}
