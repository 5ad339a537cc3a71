"""Runs one step of a launch, an argv list and never a shell string, or prints it on a dry run.

What is printed passes through `redact`, so neither a dry run nor an error message shows a secret.
"""

import shlex
import subprocess
from collections.abc import Sequence
from typing import TextIO

from pipeline import redact


class LaunchError(RuntimeError):
    """A launch step could not run or failed; the message says which and what to do."""


def describe(argv: Sequence[str]) -> str:
    """The command as one shell-quoted line, secrets masked: safe to print, paste and run."""
    return shlex.join(redact.redact_argv(argv))


def run(argv: Sequence[str], *, dry_run: bool, out: TextIO, input_text: str | None = None) -> None:
    """Runs `argv` (feeding it `input_text`), or writes it to `out` as a line when `dry_run`.

    Raises:
      LaunchError: the program is missing or exits non-zero.
    """
    if dry_run:
        out.write(describe(argv) + "\n")
        return
    try:
        completed = subprocess.run(list(argv), input=input_text, text=True, check=False)
    except FileNotFoundError:
        raise LaunchError(
            f"{argv[0]!r} was not found on PATH: install it, or pass --dry_run to print the "
            "commands instead."
        ) from None
    if completed.returncode != 0:
        raise LaunchError(f"Exit code {completed.returncode} from: {describe(argv)}")
