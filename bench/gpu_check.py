"""GPU check for a host with one NVIDIA GPU: does the pipeline use it, and how fast is it there?

In about 8 minutes (`--budget_minutes`), each step in its own process, and written to
bench/results/gpu_check.json as it goes:

  probe         the GPU (nvidia-smi), TensorFlow's CUDA/cuDNN build, the GPUs TensorFlow sees,
                the strategy `auto` picks and the encoder LSTM it resolves to
  tests         the trainer tests that touch devices (cuDNN encoder, fused kernels, float16 loss
                scaling, strategy choice; tests/trainer/test_gpu.py runs only on a GPU)
  dataset       the bundled corpus preprocessed, unless --data_dir already holds it
  train_speed   bench/train.py, graph mode, float32 and mixed_float16
  train_run     a short mixed_float16 run of the reference model (nmt-train)
  decode_speed  bench/decode.py on that run, ours only (decoding is float32 by design: the
                float32 twin; OpenNMT-tf's venv is not expected there)

A step that cannot finish inside the budget is stopped and recorded as such; the ones after it are
recorded as skipped. Without a GPU the check stops after the probe and says why. `--dry_run`
probes and writes the plan (every command) without running it: the part CI runs on CPU;
`--allow_cpu` runs the steps without a GPU, to test this script (its figures are CPU figures).

  .venv/bin/python bench/gpu_check.py [--budget_minutes 8] [--data_dir D] [--dry_run]
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

RESULT = "gpu_check"
DEVICE_TESTS = (
    "tests/trainer/test_gpu.py",
    "tests/trainer/test_encoder_lstm.py",
    "tests/trainer/test_recurrent.py",
    "tests/trainer/test_float16.py",
    "tests/trainer/test_distribution.py",
)
TRAIN_VARIANTS = ("graph", "graph_fp16")
TRAIN_RUN_OVERRIDES = (
    "train.train_steps=300,train.mixed_precision=mixed_float16,train.checkpoint_every=300,"
    "train.eval_every=300,train.eval_sentences=100"
)
_TAIL = 3000


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of the check: what it runs, its own time limit, the JSON it leaves behind."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float
    result_file: str = ""
    needs: tuple[str, ...] = ()  # steps that must have passed first


def plan(data_dir: str, work_dir: str) -> list[Step]:
    """The steps after the probe, in order."""
    python = sys.executable
    run_dir = os.path.join(work_dir, "train_run")
    junit = os.path.join(work_dir, "tests.xml")
    steps = [
        Step(
            "tests",
            (python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}")
            + DEVICE_TESTS,
            180,
            junit,
        ),
    ]
    if not os.path.exists(os.path.join(data_dir, "COMPLETED")):
        steps.append(
            Step(
                "dataset",
                (python, "-m", "preprocessing.main", f"--input={common.BUNDLED_CORPUS}")
                + (f"--output_dir={data_dir}", "--overwrite"),
                180,
            )
        )
    steps += [
        Step(
            "train_speed",
            (python, "bench/train.py", f"--variants={','.join(TRAIN_VARIANTS)}", "--windows=4")
            + (f"--data_dir={data_dir}",),
            150,
            os.path.join(common.RESULTS, "train.json"),
            needs=("dataset",),
        ),
        Step(
            "train_run",
            (python, "-m", "trainer.main", "--experiment=attention_seq2seq/base")
            + (f"--data_dir={data_dir}", f"--model_dir={run_dir}", "--restart")
            + (f"--params_override={TRAIN_RUN_OVERRIDES}", "--noexport", "--noevaluate_test"),
            150,
            os.path.join(run_dir, "eval_history.jsonl"),
            needs=("dataset",),
        ),
        Step(
            "decode_speed",
            (python, "bench/decode.py", f"--run_dir={run_dir}", "--limit=100", "--streams=2")
            + ("--skip_opennmt",),  # its venv is this machine's (bench/opennmt_reference/)
            150,
            os.path.join(common.RESULTS, "decode_streams2.json"),
            needs=("train_run",),
        ),
    ]
    return steps


def probe() -> dict:
    """The host as TensorFlow and the trainer see it (runs in a child process: `--probe`)."""
    import tensorflow as tf

    from pipeline import config
    from trainer import distribution

    host = distribution.inspect_host()
    cfg = config.build_config("attention_seq2seq/base")
    strategy = distribution.choose_strategy(cfg.runtime, host, distribution.cpu_replicas(cfg))
    kind = "gpu" if host.gpus else "cpu"
    build = tf.sysconfig.get_build_info()
    return {
        "nvidia_smi": _nvidia_smi(),
        "tensorflow": tf.__version__,
        "cuda_build": build.get("cuda_version", ""),
        "cudnn_build": build.get("cudnn_version", ""),
        "gpus_visible": host.gpus,
        "nvidia_devices": host.nvidia_devices,
        "strategy": strategy,
        "encoder_lstm": distribution.resolve(cfg, 1, kind).model.encoder_lstm,
    }


def _nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    query = "--query-gpu=name,driver_version,memory.total,compute_cap"
    result = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
    )
    return (result.stdout or result.stderr).strip()


def _read_result(path: str):
    """What a step left behind: JSON, the last record of a JSON-lines file, or junit counts."""
    if not path or not os.path.exists(path):
        return None
    if path.endswith(".xml"):
        suite = ElementTree.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            lines = [line for line in f if line.strip()]
            return json.loads(lines[-1]) if lines else None
        return json.load(f)


def run_step(step: Step, seconds_left: float, failed: frozenset = frozenset()) -> dict:
    """Runs `step` with the smaller of its own limit and the budget left; returns its record.

    A step whose `needs` include one of the `failed` steps is skipped.
    """
    missing = sorted(set(step.needs) & failed)
    if missing:
        return {"step": step.name, "status": f"skipped: needs {', '.join(missing)}"}
    if seconds_left <= 0:
        return {"step": step.name, "status": "skipped: time budget spent"}
    if step.result_file and os.path.exists(step.result_file):
        os.remove(step.result_file)  # only this run's output counts
    started = time.monotonic()
    timeout = min(step.timeout_s, seconds_left)
    try:
        result = subprocess.run(
            list(step.argv), capture_output=True, text=True, timeout=timeout, cwd=common.REPO
        )
        status = "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
        output = result.stdout + result.stderr
    except subprocess.TimeoutExpired as e:
        status = f"stopped after {timeout:.0f} s"
        output = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(
            errors="replace"
        )
    record = {"step": step.name, "status": status, "seconds": round(time.monotonic() - started, 1)}
    record["result"] = _read_result(step.result_file)
    if status != "ok":
        record["output_tail"] = output[-_TAIL:]
    return record


def _probe_in_child() -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--probe"], capture_output=True, text=True, cwd=common.REPO
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("PROBE ")), None)
    if line is None:
        raise SystemExit(f"The probe failed:\n{result.stderr[-_TAIL:]}")
    return json.loads(line[len("PROBE ") :])


def _write(report: dict) -> str:
    return common.write_json(RESULT, report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_minutes", type=float, default=8.0)
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--work_dir", default=os.path.join(common.REPO, "runs", "gpu_check"))
    parser.add_argument("--dry_run", action="store_true", help="Probe and plan; run nothing.")
    parser.add_argument(
        "--allow_cpu", action="store_true", help="Run the steps without a GPU (tests this script)."
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print("PROBE " + json.dumps(probe()))
        return 0
    started = time.monotonic()
    budget_s = args.budget_minutes * 60
    report = {"budget_minutes": args.budget_minutes, "probe": _probe_in_child()}
    steps = plan(os.path.abspath(args.data_dir), os.path.abspath(args.work_dir))
    report["plan"] = [
        {"step": s.name, "argv": list(s.argv), "timeout_s": s.timeout_s} for s in steps
    ]
    print(json.dumps(report["probe"], indent=2))
    if args.dry_run:
        report["steps"] = [{"step": s.name, "status": "planned (dry run)"} for s in steps]
        print("written", _write(report))
        return 0
    if not report["probe"]["gpus_visible"] and not args.allow_cpu:
        report["verdict"] = "no GPU visible to TensorFlow; nothing was run (see the probe)"
        print(report["verdict"], "\nwritten", _write(report))
        return 1
    os.makedirs(args.work_dir, exist_ok=True)
    report["steps"] = []
    for step in steps:
        print(f"{step.name} ...", flush=True)
        failed = frozenset(r["step"] for r in report["steps"] if r["status"] != "ok")
        record = run_step(step, budget_s - (time.monotonic() - started), failed)
        report["steps"].append(record)
        report["seconds"] = round(time.monotonic() - started, 1)
        _write(report)
        print(f"  {record['status']} ({record.get('seconds', 0)} s)", flush=True)
    failed = [r["step"] for r in report["steps"] if r["status"] != "ok"]
    report["verdict"] = "all steps passed" if not failed else f"not passed: {', '.join(failed)}"
    print(report["verdict"], "\nwritten", _write(report))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
