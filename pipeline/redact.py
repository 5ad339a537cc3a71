"""Hides secret values before anything is printed, logged or recorded.

A name counts as secret when it contains KEY, TOKEN, SECRET, PASSWORD or CREDENTIAL (any case):
environment variables passed to cluster jobs, `--flag=value` or `NAME=value` words of a command,
and Beam options recorded in metadata.json.
"""

import re
from collections.abc import Mapping, Sequence

REDACTED = "REDACTED"

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"(-{0,2}[A-Za-z_][\w.-]*)=(.*)", re.DOTALL)


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` whose secret-named values are replaced by a marker."""
    return {name: REDACTED if is_secret(name) else value for name, value in env.items()}


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A copy of `argv` in which `--secret_flag=value` and `SECRET_VAR=value` words are masked."""
    redacted = []
    for word in argv:
        match = _ASSIGNMENT.fullmatch(word)
        if match and is_secret(match.group(1)):
            word = f"{match.group(1)}={REDACTED}"
        redacted.append(word)
    return redacted
