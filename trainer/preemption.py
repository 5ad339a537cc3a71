"""Graceful preemption: SIGTERM asks the trainer to checkpoint at the next loop boundary and exit.

Cluster schedulers send SIGTERM before killing a pod or VM. The handler only sets a flag; the
training loop polls it between `steps_per_loop` loops (all workers agree on it), saves, and the
entry point exits with `EXIT_CODE` so the scheduler knows the job is not finished.
"""

import signal

from absl import logging

EXIT_CODE = 128 + signal.SIGTERM


class StopSignal:
    """Callable that turns true once one of `signals` has arrived."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.received = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        self.received = signum
        logging.warning(
            "Received %s: saving a checkpoint at the next step boundary, then exiting.",
            signal.Signals(signum).name,
        )

    def __call__(self) -> bool:
        return self.received is not None
