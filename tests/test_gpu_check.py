"""bench/gpu_check.py, the part that runs without a GPU: probe, plan, step runner, report.

No GPU here: the probe runs for real and finds none, so the check stops before its steps; the
planned commands are checked against what they call (files, bench variants, trainer flags, the
device tests pytest collects), and the step runner is driven with small stand-in commands.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from bench import common, gpu_check
from bench import train as bench_train


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def _report(results_dir):
    return json.loads((results_dir / "gpu_check.json").read_text())


def test_without_a_gpu_the_check_probes_reports_and_runs_nothing(results, tmp_path, capsys):
    argv = [f"--work_dir={tmp_path / 'work'}", f"--data_dir={tmp_path / 'data'}"]
    assert gpu_check.main(argv) == 1
    report = _report(results)
    probe = report["probe"]
    assert probe["gpus_visible"] == 0 and probe["tensorflow"] == "2.15.1"
    assert probe["strategy"] in ("cpu_mirrored", "one_device") and probe["encoder_lstm"] == "fused"
    assert "no GPU visible" in report["verdict"] and "steps" not in report
    assert not (tmp_path / "work").exists()
    planned = [step["step"] for step in report["plan"]]
    assert planned == ["tests", "dataset", "train_speed", "train_run", "decode_speed"]


def test_dry_run_writes_the_plan(results, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "_probe_in_child", lambda: {"gpus_visible": 1})
    assert gpu_check.main(["--dry_run", f"--work_dir={tmp_path}"]) == 0
    report = _report(results)
    assert {step["status"] for step in report["steps"]} == {"planned (dry run)"}


def test_planned_commands_call_what_exists(tmp_path):
    steps = {step.name: step for step in gpu_check.plan(str(tmp_path / "d"), str(tmp_path / "w"))}
    for script in ("bench/train.py", "bench/decode.py", *gpu_check.DEVICE_TESTS):
        assert os.path.exists(os.path.join(common.REPO, script)), script
    assert set(gpu_check.TRAIN_VARIANTS) <= set(bench_train.VARIANTS)
    with open(os.path.join(common.REPO, "trainer", "main.py"), encoding="utf-8") as f:
        defined = set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', f.read()))
    for word in steps["train_run"].argv[3:]:
        name = word.split("=")[0].lstrip("-")
        assert name in defined or name.removeprefix("no") in defined, name
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *gpu_check.DEVICE_TESTS],
        capture_output=True,
        text=True,
        cwd=common.REPO,
    )
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert "tests/trainer/test_gpu.py::test_keras_lstm_picks_cudnn" in collected.stdout


def test_step_runner_records_results_failures_timeouts_and_the_budget(tmp_path):
    result_file = tmp_path / "out.json"
    write = f"import json; json.dump({{'rate': 7}}, open({str(result_file)!r}, 'w'))"
    ok = gpu_check.Step("ok", (sys.executable, "-c", write), 60, str(result_file))
    assert gpu_check.run_step(ok, 60)["result"] == {"rate": 7}

    failing = gpu_check.Step("bad", (sys.executable, "-c", "raise SystemExit('boom')"), 60)
    record = gpu_check.run_step(failing, 60)
    assert record["status"] == "failed (exit 1)" and "boom" in record["output_tail"]

    slow = gpu_check.Step("slow", (sys.executable, "-c", "import time; time.sleep(30)"), 60)
    assert gpu_check.run_step(slow, 1.0)["status"] == "stopped after 1 s"
    assert gpu_check.run_step(ok, 0)["status"] == "skipped: time budget spent"
    after = gpu_check.Step("after", (sys.executable, "-c", "pass"), 60, needs=("bad",))
    assert gpu_check.run_step(after, 60, frozenset({"bad"}))["status"] == "skipped: needs bad"
