"""The local launcher with real worker processes: TF_CONFIG, prefixed logs, fail fast, Ctrl-C.

Workers are tiny Python programs standing in for the trainer (the launcher only needs processes
that read TF_CONFIG and exit); nothing is mocked.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prints the worker's TF_CONFIG; exits 0.
_ECHO = "import os; print('TF_CONFIG=' + os.environ['TF_CONFIG'])"

# Worker 1 dies the way the brief's kill test wants (WORKER_FATE: 'sigkill' or an exit code);
# worker 0 would sleep for far longer than the test allows, ignoring SIGTERM if asked to.
_ONE_DIES = textwrap.dedent(
    """
    import json, os, signal, time
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    if index == 1:
        time.sleep(0.3)
        fate = os.environ["WORKER_FATE"]
        if fate == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise SystemExit(int(fate))
    if os.environ.get("IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("worker 0 waiting", flush=True)
    time.sleep(120)
    """
)

# A stand-in for trainer.main run through `nmt-launch local --module`: writes its argv and waits for
# SIGINT, which it reports before exiting.
_FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    print("argv", json.dumps(sys.argv[1:]), flush=True)
    def on_sigint(number, frame):
        print("got SIGINT", flush=True)
        raise SystemExit(0)
    signal.signal(signal.SIGINT, on_sigint)
    open(os.path.join(os.environ["READY_DIR"], f"ready-{index}"), "w").close()
    if os.environ.get("WAIT_FOR_SIGINT"):
        time.sleep(120)
    """
)


class _Lines:
    """A text stream that keeps what was written."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_free_ports_are_distinct():
    ports = local.free_ports(4)
    assert len(set(ports)) == 4 and all(port > 0 for port in ports)


def test_two_workers_get_their_own_tf_config_and_prefixed_output():
    out = _Lines()
    status = local.run_local_cluster([sys.executable, "-c", _ECHO], 2, output=out)
    assert status == 0
    configs = {}
    for line in out.text.splitlines():
        prefix, _, payload = line.partition(" TF_CONFIG=")
        configs[prefix] = json.loads(payload)
    assert set(configs) == {"[worker 0]", "[worker 1]"}
    assert configs["[worker 0]"]["task"] == {"type": "worker", "index": 0}
    assert configs["[worker 1]"]["task"] == {"type": "worker", "index": 1}
    workers = configs["[worker 0]"]["cluster"]["worker"]
    assert workers == configs["[worker 1]"]["cluster"]["worker"]
    assert len(set(workers)) == 2 and all(w.startswith("127.0.0.1:") for w in workers)


def test_worker_exit_code_fails_the_job_and_names_the_worker(caplog):
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    status = local.run_local_cluster(
        [sys.executable, "-c", _ONE_DIES],
        2,
        env={"WORKER_FATE": "3"},
        grace_seconds=5,
        output=_Lines(),
    )
    assert status == 3
    assert time.monotonic() - start < 10
    assert "worker 1 exited with code 3" in caplog.text


def test_worker_ignoring_sigterm_is_killed_after_the_grace(caplog):
    caplog.set_level(logging.INFO)
    out = _Lines()
    start = time.monotonic()
    status = local.run_local_cluster(
        [sys.executable, "-c", _ONE_DIES],
        2,
        env={"WORKER_FATE": "4", "IGNORE_SIGTERM": "1"},
        grace_seconds=0.5,
        output=out,
    )
    assert status == 4
    assert time.monotonic() - start < 10
    assert "[worker 0] worker 0 waiting" in out.text
    assert "worker 0 still running 0.5s later; killing it" in caplog.text


def _cli(args, env, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "launch.main", "local", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _cli_env(tmp_path, **extra):
    module_dir = tmp_path / "modules"
    module_dir.mkdir(exist_ok=True)
    (module_dir / "one_dies.py").write_text(_ONE_DIES)
    (module_dir / "fake_trainer.py").write_text(_FAKE_TRAINER)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(module_dir), REPO]),
        "READY_DIR": str(tmp_path),
        **extra,
    }


_JOB_FLAGS = ["--experiment=attention_seq2seq/tiny", "--data_dir=/data/d"]


def test_cli_exits_non_zero_within_60s_naming_the_killed_worker(tmp_path):
    """The acceptance test: one worker dies by SIGKILL; the other would sleep for two minutes."""
    env = _cli_env(tmp_path, WORKER_FATE="sigkill")
    flags = [*_JOB_FLAGS, f"--model_dir={tmp_path / 'run'}", "--module=one_dies"]
    start = time.monotonic()
    proc = _cli([*flags, "--grace_seconds=5"], env)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 60
    assert proc.returncode == 128 + signal.SIGKILL
    assert "worker 1 was killed by SIGKILL" in err


def test_cli_writes_config_passes_flags_and_forwards_ctrl_c(tmp_path):
    env = _cli_env(tmp_path, WAIT_FOR_SIGINT="1")
    model_dir = tmp_path / "run"
    proc = _cli(
        [*_JOB_FLAGS, f"--model_dir={model_dir}", "--module=fake_trainer", "--num_workers=2"], env
    )
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "[worker 0] got SIGINT" in out and "[worker 1] got SIGINT" in out
    config_file = model_dir / "launch" / "config.yaml"
    assert "multi_worker_mirrored" in config_file.read_text()
    argv_line = next(line for line in out.splitlines() if line.startswith("[worker 1] argv "))
    assert json.loads(argv_line.removeprefix("[worker 1] argv ")) == [
        "--experiment=attention_seq2seq/tiny",
        f"--config_file={config_file}",
        "--data_dir=/data/d",
        f"--model_dir={model_dir}",
        "--strategy=multi_worker_mirrored",
    ]


def test_zero_workers_is_refused():
    with pytest.raises(ValueError, match="num_workers"):
        local.run_local_cluster([sys.executable, "-c", "pass"], 0)
