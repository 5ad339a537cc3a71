"""The elements that flow between the job's transforms, and the reasons a line is rejected.

Every input record becomes exactly one `Line`; every `Line` ends as one written example or one
`Reject`. Each element carries its origin and original bytes to the end, so a rejected pair can
be reported with where it came from whatever stage rejects it.
"""

from typing import NamedTuple

WRONG_FIELD_COUNT = "wrong_field_count"
INVALID_UTF8 = "invalid_utf8"
TOO_MANY_CHARS = "too_many_chars"
EMPTY_SIDE = "empty_side"
LINE_COUNT_MISMATCH = "line_count_mismatch"
DUPLICATE = "duplicate"
TOO_LONG = "too_long"
BAD_LENGTH_RATIO = "bad_length_ratio"

# Every reason, in the order the job checks them; metadata lists each, zero counts included.
REJECT_REASONS = (
    LINE_COUNT_MISMATCH,
    WRONG_FIELD_COUNT,
    INVALID_UTF8,
    TOO_MANY_CHARS,
    EMPTY_SIDE,
    DUPLICATE,
    TOO_LONG,
    BAD_LENGTH_RATIO,
)


def input_of(origin: str) -> str:
    """The input of an origin: its file, or its TFDS split shard (`tfds:name:split[Nshard]`).

    The job accounts for every record per input, so a loss is reported where it happened.
    """
    return origin.rpartition(":")[0]


class Line(NamedTuple):
    """One input record as read.

    Attributes:
      origin: Where it came from: `path:line` (1-based) or `tfds:name:split[Nshard]:index`.
      raw: The original bytes, both sides joined by a tab, for the rejects file.
      fields: The raw sides; a well-formed record has exactly two.
      error: A reject reason the reader already knows (an unpaired line of two files), or "".
      split: The split the input put it in (a TFDS set's own splits), or "" to split by hash.
    """

    origin: str
    raw: bytes
    fields: tuple[bytes, ...]
    error: str = ""
    split: str = ""


class Pair(NamedTuple):
    """A cleaned sentence pair: normalised source and target text, and its `Line.split`."""

    source: str
    target: str
    origin: str
    raw: bytes
    split: str = ""


class Reject(NamedTuple):
    """A record that will not be written, and why."""

    reason: str
    origin: str
    raw: bytes


class TokenizedPair(NamedTuple):
    """A pair of one split with its subword ids (no BOS/EOS)."""

    split: str
    source_ids: list[int]
    target_ids: list[int]
    pair: Pair


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def format_reject(reject: Reject) -> str:
    """One rejects-file line: `reason<TAB>origin<TAB>raw`.

    Backslash, tab, CR and LF are escaped as `\\\\`, `\\t`, `\\r`, `\\n` so the record stays on one
    line with three fields, and bytes that are not UTF-8 appear as `\\xNN`, so the line shows
    exactly what was read.
    """
    raw = reject.raw.decode("utf-8", "surrogateescape")
    raw = _escape(raw).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return f"{reject.reason}\t{_escape(reject.origin)}\t{raw}"
