"""The Procfile and docker-compose.yml describe the same services, and the compose file holds
what FastIO and the GPU workers need."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_both_describe_the_same_services():
    assert set(procfile()) == set(compose()["services"])


def test_workers_share_the_hosts_memory_and_gpu_workers_reserve_their_device():
    services = compose()["services"]
    for name in ("worker", "gpu-worker", "triton"):
        assert services[name]["ipc"] == "host", name  # FastIO segments and Triton's shared memory
    [device] = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "--gpus" in services["gpu-worker"]["command"]


def test_nothing_listens_beyond_loopback_on_the_host_and_secrets_are_required():
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert ":?" in services["api"]["environment"]["CARINA_API_TOKEN"]
    assert ":?" in services["flower"]["environment"]["CARINA_FLOWER_AUTH"]
    assert ":?" in services["metrics"]["environment"]["CARINA_METRICS_TOKEN"]
    assert ":?" in services["dicom"]["environment"]["CARINA_DICOM_ALLOWED_AES"]  # DICOM's credentials
    assert services["redis"]["command"][:2] == ["carina", "redis"]  # the role users made with the server
    assert "${CARINA_REDIS_PASSWORD:?" in services["redis"]["environment"]["CARINA_REDIS_URL"]


def test_compose_s_triton_serves_the_native_onnx_repository_built_into_its_image():
    triton = compose()["services"]["triton"]
    dockerfile = (ROOT / triton["build"]["dockerfile"]).read_text()
    assert "triton_configs.py --onnxruntime /models" in dockerfile
    assert "--model-repository=/models" in triton["command"] and not triton.get("volumes")  # not the python one


def test_each_service_reaches_redis_as_its_role_and_only_redis_knows_the_admin_password():
    shared = compose()["x-carina"]["environment"]
    assert shared["CARINA_REDIS_WORKER_URL"].startswith("redis://carina-worker:${CARINA_REDIS_WORKER_PASSWORD:?")
    assert shared["CARINA_REDIS_FRONT_URL"].startswith("redis://carina-front:${CARINA_REDIS_FRONT_PASSWORD:?")
    for name, service in compose()["services"].items():
        if name != "redis":
            assert "CARINA_REDIS_PASSWORD" not in str(service.get("environment", shared)), name


def test_every_procfile_command_is_a_carina_command_that_exists():
    import subprocess
    import sys

    for name, command in procfile().items():
        if "carina " not in command:
            continue
        words = command.split("carina ", 1)[1].split()
        out = subprocess.run([sys.executable, "-m", "carina", words[0], "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr)


def compose_client() -> list[str] | None:
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_a_compose_client_accepts_the_file_and_demands_the_secrets(tmp_path):
    import os
    import subprocess

    import pytest

    client = compose_client()
    if client is None:
        pytest.skip("no Compose client: `make compose` installs one (root)")
    command = [*client, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"]
    secrets = {"CARINA_API_TOKEN": "t0ken", "CARINA_FLOWER_AUTH": "radiology:s3cret", "CARINA_REDIS_PASSWORD": "r3dis",
               "CARINA_REDIS_WORKER_PASSWORD": "w0rker", "CARINA_REDIS_FRONT_PASSWORD": "fr0nt",
               "CARINA_METRICS_TOKEN": "m3trics", "CARINA_DICOM_ALLOWED_AES": "PACS"}
    ok = subprocess.run(command, env={**os.environ, **secrets}, capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    for missing in secrets:  # each one is demanded by name
        env = {**{k: v for k, v in os.environ.items() if k not in secrets}, **secrets}
        del env[missing]
        refused = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert refused.returncode != 0 and missing in refused.stderr, (missing, refused.stderr)


def test_the_services_image_runs_as_an_unprivileged_user():
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0")
    services = compose()["services"]
    assert all(service.get("user", "") not in ("root", "0") for service in services.values())


def test_an_installed_carina_has_every_package_of_the_house():
    import tomllib

    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "models"}
    ours = {".".join(p.parent.relative_to(ROOT).parts) for top in tops for p in (ROOT / top).glob("**/__init__.py")}
    assert ours and ours <= set(find_packages(str(ROOT), include=include))
