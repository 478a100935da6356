"""`exports/README.md`: what each exported file is and how to serve it, written by the export stage with the
names, sizes and parity figures of this export (so the commands in it can be pasted as they are)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The Triton and TensorRT container releases must match: an engine only loads in the TensorRT it was built with.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"
TENSORRT_IMAGE = "nvcr.io/nvidia/tensorrt:<yy.mm>-py3"


def _parity_line(summary: dict[str, Any]) -> str:
    p = summary["parity"]
    parts = [f"{k.removeprefix('parity.')} = {v:.3g}" for k, v in sorted(p.items())
             if k.endswith(("max_abs_err", "max_level_diff"))]
    verdict = "passed" if p.get("passed") else "FAILED"
    return f"onnxruntime vs PyTorch: {verdict}; " + "; ".join(parts)


def readme_text(summary: dict[str, Any], trt_model: str) -> str:
    g = summary["generator"]
    cfg = summary["config"]
    name = cfg["triton_name"]
    res, ch, z_dim, c_dim = g["img_resolution"], g["img_channels"], g["z_dim"], g["c_dim"]
    c_in = f", `c` [B, {c_dim}] float32 (one-hot class)" if c_dim else ""
    graphs = summary["graphs"]
    size = {n: f"{v['bytes'] / 1e6:.1f} MB" for n, v in graphs.items()}
    rows = [
        ("generator.onnx", f"mapping + truncation + synthesis, fp32: `z` [B, {z_dim}]{c_in}, `truncation_psi` [B, 1] "
                           f"-> `img` [B, {ch}, {res}, {res}] float32 in ~[-1, 1]; TensorRT builds from this"),
        ("generator_uint8.onnx", f"the same plus the official uint8 conversion: -> `img_uint8` [B, {res}, {res}, {ch}] "
                                 "uint8, ready to encode as PNG; what Triton and `serve` run"),
        ("synthesis.onnx", f"synthesis only: `ws` [B, {g['num_ws']}, {g['w_dim']}] -> `img` (mixing, projection)"),
    ]
    rows += [(f"{n}.onnx", "float16 inside, float32 inputs and outputs (parity reported, not gated)")
             for n in graphs if n.endswith("fp16")]
    if (summary.get("openvino") or {}).get("enabled"):
        rows += [("generator[_uint8].xml + .bin", "OpenVINO IR (CPU): `render`/`serve --model generator_uint8.xml "
                                                  "[--precision bf16]`")]
    rows += [
        ("parity.json", _parity_line(summary)),
        ("build_engine.sh", "run on the target GPU: `trtexec` builds generator.plan and synthesis.plan, then installs "
                            f"generator.plan as the Triton model `{trt_model}`"),
        (f"triton/{trt_model}.config.pbtxt", "that model's Triton config, copied into the repository by the script"),
        (f"model_repository/{name}/", f"Triton model `{name}` ({summary['triton']['platform']}): config.pbtxt + "
                                      f"1/{Path(summary['triton']['model']).name}"),
        ("triton_client.py", "client: seeds in, PNGs out, over the KServe v2 HTTP/JSON protocol (Triton or `serve`)"),
        ("export_summary.json", "every graph's inputs, outputs, sha256 and node count; the config of this export"),
    ]
    table = "\n".join(f"| `{f}` | {size.get(f.removesuffix('.onnx'), '')} | {what} |" for f, what in rows)
    batch = f"{cfg['batch_min']}..{cfg['batch_max']} (optimal {cfg['batch_opt']})"
    transform = summary.get("transform")
    note_sg3 = ("\nThe StyleGAN3 user transform is baked into the graphs as it was at export time: "
                f"{transform}.\n" if transform is not None else "")
    return f"""# Exported generator ({res} px, z_dim {z_dim}, c_dim {c_dim})

Written by `python -m stages.export` from `{summary['network']}`. Noise is baked as constants (`noise_mode='const'`);
psi is an input per sample (1 = no truncation); the batch axis is dynamic ({batch} in the TensorRT profile and
Triton's dynamic batcher).{note_sg3}

| file | size | what it is |
| --- | --- | --- |
{table}

## Serve on CPU (no Triton needed)

    python -m stages.export serve --model exports/generator_uint8.onnx --port 8080
    curl -o seed3.png 'http://127.0.0.1:8080/png?seed=3&psi=0.7'
    python exports/triton_client.py --url http://127.0.0.1:8080 --model {name} --seeds 0-7 --outdir out/

`serve` speaks the same KServe v2 protocol as Triton (`/v2/models/{name}/infer`), so the client works against both.
A PyTorch snapshot can be served instead of a graph: `--model <snapshot> --precision bf16` runs the synthesis
blocks in bfloat16 (about twice as fast on CPUs with AVX-512 BF16, images within a few grey levels of fp32).

## Serve on a GPU with Triton

    docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
        -v $PWD/exports/model_repository:/models {TRITON_IMAGE} tritonserver --model-repository=/models
    python exports/triton_client.py --url http://localhost:8000 --model {name} --seeds 0-7 --trunc 0.7

## TensorRT engine (on the target GPU)

An engine is specific to the GPU model and the TensorRT version, so it is built where it runs, with the TensorRT
of the Triton release that will load it (same `<yy.mm>` for both containers):

    docker run --gpus all --rm -v $PWD/exports:/exports {TENSORRT_IMAGE} bash /exports/build_engine.sh

The script writes `generator.plan` and `synthesis.plan` (FP16 kernels: {cfg['engine_fp16']}), then installs
`generator.plan` as `model_repository/{trt_model}/1/model.plan` with its `config.pbtxt` (float32 `img` output,
KIND_GPU). Restart Triton (or load the model) and ask for it by name:

    python exports/triton_client.py --url http://localhost:8000 --model {trt_model} --seeds 0-7

The engine's images are compared with PyTorch by `python -m stages.export --engine` on a machine with TensorRT
(figures in export_summary.json under `tensorrt.engine`); TensorRT FP16 differs from fp32 by about 1e-2.
"""


def write_readme(out: Path, summary: dict[str, Any], trt_model: str) -> Path:
    from stages.common.fileio import write_text_atomic

    return write_text_atomic(out / "README.md", readme_text(summary, trt_model))
