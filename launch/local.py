"""Runs a multi-worker job as processes on this machine: the embedded default and what tests use.

Each worker gets its own TF_CONFIG (worker 0 is the chief of MultiWorkerMirroredStrategy) on free
127.0.0.1 ports, and its output lines are prefixed with `[worker i]`. Each worker runs in its own
process group: a terminal's Ctrl-C then reaches the workers once, forwarded by this launcher, and a
signal sent to a worker reaches anything it started. If one worker fails, the others get SIGTERM,
then SIGKILL after a grace period, and the job fails naming the worker: a dead peer would otherwise
leave the rest blocked in a collective until a long timeout.
"""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from launch import commands, runner

_POLL_SECONDS = 0.1
_OUTPUT_JOIN_SECONDS = 5.0


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1; all stay bound until every one is picked."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_config(ports: Sequence[int], index: int) -> dict:
    """The TF_CONFIG of worker `index` in a cluster of one worker per port."""
    return {
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }


def config_path(model_dir: str) -> str:
    """Where `launch` writes the frozen config it passes to local workers."""
    return os.path.join(model_dir, "launch", "config.yaml")


class _Worker:
    """One worker process and the thread that copies its output, line by line, with a prefix."""

    def __init__(self, index: int, argv: Sequence[str], env: Mapping[str, str], output, lock):
        self.index = index
        self.process = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._copy, args=(output, lock), daemon=True)
        self._reader.start()

    def _copy(self, output: TextIO, lock: threading.Lock) -> None:
        prefix = f"[worker {self.index}] "
        for line in self.process.stdout:
            with lock:
                output.write(prefix + line.rstrip("\n") + "\n")
                output.flush()

    def send_signal(self, signum: int) -> None:
        """Signals the worker's process group, if the worker is still running."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    def join_output(self) -> None:
        self._reader.join(_OUTPUT_JOIN_SECONDS)


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _exit_status(code: int) -> int:
    """A shell-style status: a death by signal N becomes 128 + N."""
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def _received_signals():
    """Records SIGINT and SIGTERM for the poll loop to forward (off the main thread: none)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, _: received.append(number))
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(workers: Sequence[_Worker], grace_seconds: float, signum: int | None) -> None:
    """Sends `signum` (if any) to running workers; SIGKILLs those still running after the grace."""
    running = [worker for worker in workers if worker.process.poll() is None]
    if signum is not None:
        for worker in running:
            worker.send_signal(signum)
    deadline = time.monotonic() + grace_seconds
    for worker in running:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logging.warning(
                "worker %d still running %gs later; killing it.", worker.index, grace_seconds
            )
            worker.send_signal(signal.SIGKILL)
            worker.process.wait()


def _wait(workers: Sequence[_Worker], received: list[int], grace_seconds: float) -> int:
    """Polls the workers until all succeed, one fails, or a signal arrives; returns the status."""
    while True:
        if received:
            signum = received[0]
            logging.warning(
                "Got %s: forwarded to the workers; waiting up to %gs for them to exit.",
                signal.Signals(signum).name,
                grace_seconds,
            )
            for worker in workers:
                worker.send_signal(signum)
            _stop(workers, grace_seconds, signum=None)
            return 128 + signum
        codes = [worker.process.poll() for worker in workers]
        for worker, code in zip(workers, codes, strict=True):
            if code is not None and code != 0:
                logging.error(
                    "worker %d %s; stopping the other workers.", worker.index, _describe_exit(code)
                )
                _stop(workers, grace_seconds, signum=signal.SIGTERM)
                return _exit_status(code)
        if all(code == 0 for code in codes):
            return 0
        time.sleep(_POLL_SECONDS)


def run_local_cluster(
    argv_for_worker: Sequence[str],
    num_workers: int,
    env: Mapping[str, str] | None = None,
    grace_seconds: float = 30.0,
    output: TextIO | None = None,
) -> int:
    """Runs `argv_for_worker` as `num_workers` local processes and waits for all of them.

    Args:
      argv_for_worker: the command every worker runs; workers tell themselves apart by TF_CONFIG.
      num_workers: processes to start, at least one.
      env: variables added to this process's environment for every worker.
      grace_seconds: how long workers may take to exit after SIGTERM or a forwarded Ctrl-C
        (a trainer saves a checkpoint then) before they get SIGKILL.
      output: where the prefixed worker lines go; standard output by default.

    Returns:
      0 if every worker exited 0; otherwise the first failed worker's exit status (128 + N for
      death by signal N), or 128 + N after this process got signal N (130 for Ctrl-C).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}.")
    output = output or sys.stdout
    ports = free_ports(num_workers)
    base_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    lock = threading.Lock()
    workers: list[_Worker] = []
    with _received_signals() as received:
        try:
            for index in range(num_workers):
                worker_env = {**base_env, "TF_CONFIG": json.dumps(tf_config(ports, index))}
                workers.append(_Worker(index, argv_for_worker, worker_env, output, lock))
            logging.info("Started %d workers on ports %s.", num_workers, ports)
            return _wait(workers, received, grace_seconds)
        finally:
            _stop(workers, grace_seconds, signum=signal.SIGTERM)
            for worker in workers:
                worker.join_output()


def launch(
    job: commands.TrainerJob,
    num_workers: int,
    *,
    module: str = commands.TRAINER_MODULE,
    env: Mapping[str, str] | None = None,
    grace_seconds: float = 30.0,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> int:
    """Writes the frozen config under the model directory and runs the trainer on local workers.

    Args:
      job: the training run.
      num_workers: local worker processes.
      module: the module each worker runs with `python -m` (tests substitute a stand-in).
      env: extra environment variables for every worker.
      grace_seconds: see `run_local_cluster`.
      dry_run: print the worker command instead of writing or running anything.
      out: where worker output (or the dry-run command) goes; standard output by default.

    Returns:
      The job's exit status, as `run_local_cluster` returns it.
    """
    out = out or sys.stdout
    config_file = config_path(job.model_dir)
    argv = job.argv(config_file, python=sys.executable, module=module)
    if dry_run:
        env_words = [f"{name}={value}" for name, value in (env or {}).items()]
        out.write(f"# {num_workers} workers, each with TF_CONFIG task index 0..{num_workers - 1}\n")
        out.write(f"# writes {config_file}\n")
        out.write(runner.describe(["env", *env_words, *argv] if env_words else argv) + "\n")
        return 0
    os.makedirs(os.path.dirname(config_file), exist_ok=True)
    with open(config_file, "w", encoding="utf-8") as f:
        f.write(job.config_yaml)
    logging.info("Wrote %s; running: %s", config_file, runner.describe(argv))
    return run_local_cluster(argv, num_workers, env=env, grace_seconds=grace_seconds, output=out)
