"""Lines and pairs packed into one compact bytes value for the shuffles that carry the corpus.

A runner holds every element of a shuffle at once: Dataflow in its shuffle service, the
DirectRunner's engine (FnApiRunner) in the memory of its own process, where a grouped element is
kept decoded, as Python objects. A `records.Line` or `records.Pair` is six objects there, about
twice its text (600 bytes for a 320-byte line), and pickled on the wire it is larger still. Packed,
it is one bytes value without the copies of text it can rebuild (a line's fields are usually its
raw bytes split at the tab; a pair's raw line is usually its two cleaned sides joined), about the
size of the line. The job packs around its two corpus-wide shuffles (spreading the read lines
over the workers, and grouping pairs to drop duplicates), so the DirectRunner's memory follows
the corpus's bytes rather than its object count.
"""

from apache_beam import coders

from preprocessing import records

_TAB = b"\t"
# A pair's raw line as stored: given in full, or rebuilt from its sides in read order.
_RAW_GIVEN, _RAW_IS_SIDES, _RAW_IS_SIDES_REVERSED = 0, 1, 2

_LINE_CODER = coders.TupleCoder(
    [
        coders.StrUtf8Coder(),  # origin
        coders.BytesCoder(),  # raw
        coders.BooleanCoder(),  # fields are the raw line split at tabs
        coders.IterableCoder(coders.BytesCoder()),  # fields when they are not
        coders.StrUtf8Coder(),  # error
        coders.StrUtf8Coder(),  # split
    ]
)
_PAIR_CODER = coders.TupleCoder(
    [
        coders.StrUtf8Coder(),  # source
        coders.StrUtf8Coder(),  # target
        coders.StrUtf8Coder(),  # origin
        coders.VarIntCoder(),  # how raw is stored
        coders.BytesCoder(),  # raw, when given
        coders.StrUtf8Coder(),  # split
    ]
)


def pack_line(line: records.Line) -> bytes:
    """`line` as one bytes value; `unpack_line` restores it exactly."""
    fields_are_split = tuple(line.raw.split(_TAB)) == line.fields
    return _LINE_CODER.encode(
        (
            line.origin,
            line.raw,
            fields_are_split,
            () if fields_are_split else line.fields,
            line.error,
            line.split,
        )
    )


def unpack_line(packed: bytes) -> records.Line:
    """The `records.Line` that `pack_line` packed."""
    origin, raw, fields_are_split, fields, error, split = _LINE_CODER.decode(packed)
    fields = tuple(raw.split(_TAB)) if fields_are_split else tuple(fields)
    return records.Line(origin, raw, fields, error, split)


def _sides(source: str, target: str) -> bytes:
    return f"{source}\t{target}".encode()


def pack_pair(pair: records.Pair) -> bytes:
    """`pair` as one bytes value; `unpack_pair` restores it exactly."""
    if pair.raw == _sides(pair.source, pair.target):
        how, raw = _RAW_IS_SIDES, b""
    elif pair.raw == _sides(pair.target, pair.source):
        how, raw = _RAW_IS_SIDES_REVERSED, b""
    else:
        how, raw = _RAW_GIVEN, pair.raw
    return _PAIR_CODER.encode((pair.source, pair.target, pair.origin, how, raw, pair.split))


def unpack_pair(packed: bytes) -> records.Pair:
    """The `records.Pair` that `pack_pair` packed."""
    source, target, origin, how, raw, split = _PAIR_CODER.decode(packed)
    if how == _RAW_IS_SIDES:
        raw = _sides(source, target)
    elif how == _RAW_IS_SIDES_REVERSED:
        raw = _sides(target, source)
    return records.Pair(source, target, origin, raw, split)
