"""Static checks of infra/compose.yaml and infra/.env.example (no Docker needed; part of `make test`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def one_shot(svc: dict) -> bool:
    return str(svc.get("restart", "")) == "no"


def test_every_service_has_a_healthcheck_and_postgres_gates_the_servers():
    services = compose()["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker"} <= set(services)
    for name, svc in services.items():
        assert "healthcheck" in svc or one_shot(svc), name
    for name in ("mlflow", "prefect-server"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in services.items():  # a one-shot job is waited for until it has succeeded
        for dep, cond in (svc.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if one_shot(services[dep]) else "service_healthy"
            assert cond["condition"] == expected, (name, dep)
    assert "ports" not in services["postgres"], "PostgreSQL stays on the internal network"


def test_the_object_store_holds_the_dvc_remote_and_mlflow_artifacts():
    services = compose()["services"]
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("${MLFLOW_ARTIFACTS_DESTINATION:-s3://${MLFLOW_BUCKET")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"].endswith("http://minio:9000}")
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    init = (INFRA / "docker" / "minio-init.sh").read_text()
    assert 'mc mb --ignore-existing "sg2/$DVC_BUCKET" "sg2/$MLFLOW_BUCKET"' in init
    assert services["minio-init"]["environment"]["DVC_BUCKET"] == "${DVC_BUCKET:-sg2-dvc}"
    assert any(str(p).endswith(":9000") for p in services["minio"]["ports"]), "the S3 API is published for DVC"


def test_published_ports_default_to_localhost():
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_env_example_names_every_variable_and_holds_no_real_secret():
    text = (INFRA / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = (INFRA / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, flags=re.M))
    assert used <= documented, sorted(used - documented)
    for line in example.splitlines():
        m = re.match(r"^([A-Z0-9_]*PASSWORD[A-Z0-9_]*)=(.*)$", line)
        if m:
            assert m.group(2).startswith("change-me"), m.group(1)


def test_the_real_env_file_is_not_tracked():
    tracked = subprocess.run(["git", "ls-files", "infra/.env"], cwd=ROOT, capture_output=True, text=True).stdout
    assert not tracked.strip(), "infra/.env holds secrets: never commit it"


def test_training_image_is_cuda_nonroot_and_launches_accelerate():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:", dockerfile, flags=re.M)
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in dockerfile
    assert re.search(r"^USER sg2$", dockerfile, flags=re.M)
    assert '"accelerate", "launch"' in dockerfile
    # The Makefile's torch pin and the image's default agree.
    pin = re.search(r"TORCH_SPEC\s*\?=\s*torch==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"ARG TORCH_VERSION={pin}" in dockerfile


def test_prefect_worker_serves_the_pool_of_the_deployments():
    deployments = yaml.safe_load((INFRA / "prefect" / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    command = compose()["services"]["prefect-worker"]["command"]
    assert command[command.index("--pool") + 1] in pools


def test_training_image_installs_the_onnxruntime_gpu_of_its_cuda():
    """The image's onnxruntime-gpu follows its CUDA major version through the one table (tests/gpu/ort_gpu.py),
    which the build context lets in."""
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert "COPY tests/gpu/ort_gpu.py" in dockerfile and '--cuda "${CUDA_VERSION}"' in dockerfile
    assert re.search(r"^FROM nvidia/cuda:.*\nARG CUDA_VERSION$", dockerfile, flags=re.M)
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!tests/gpu/ort_gpu.py" in ignore
