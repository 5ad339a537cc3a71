"""The GPU install: extra, lock and image agree with requirements.lock (read offline).

The GPU lock was resolved from PyPI with `pip install --dry-run --report` (the README's command),
which installs nothing; no CUDA wheel is installed here and no image is built (no Docker daemon).
"""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def _pins(text):
    """{name: (extras, version)} of the `name[extras]==version` lines."""
    pins = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[a-z-]+\])?==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = (match.group(2), match.group(3))
    return pins


def test_gpu_lock_is_the_cpu_lock_plus_cuda_wheels_for_the_same_tensorflow():
    cpu, gpu_text = _pins(_read("requirements.lock")), _read("requirements-gpu.lock")
    gpu = _pins(gpu_text)
    assert "-r requirements.lock" in gpu_text.splitlines(), "shared pins must come from one file"
    assert gpu.pop("tensorflow") == ("[and-cuda]", cpu["tensorflow"][1])
    assert gpu and all(name.startswith("nvidia-") and name.endswith("-cu12") for name in gpu)
    assert not set(gpu) & set(cpu), "a package pinned in both locks could disagree"
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-nccl-cu12"} <= set(gpu)


def test_gpu_extra_and_image_use_the_locked_tensorflow():
    setup = ast.parse(_read("setup.py"))
    call = next(n for n in ast.walk(setup) if isinstance(n, ast.Call) and n.keywords)
    extras = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))
    version = _pins(_read("requirements.lock"))["tensorflow"][1]
    assert extras == {"gpu": [f"tensorflow[and-cuda]=={version}"]}
    dockerfile = _read("docker/Dockerfile.gpu")
    assert "pip install -r requirements-gpu.lock" in dockerfile
    assert "COPY requirements.lock requirements-gpu.lock ./" in dockerfile
    assert "!requirements-gpu.lock" in _read("docker/Dockerfile.gpu.dockerignore")
