"""Rejects-file lines: three fields on one line, showing exactly the bytes that were read."""

from preprocessing import records


def test_format_reject_escapes_separators_backslashes_and_bad_bytes():
    reject = records.Reject(records.INVALID_UTF8, "dir\tx/a.tsv:3", b"a\\xff\tb\r\n\xff\xc3\xa9")
    line = records.format_reject(reject)
    assert line == "invalid_utf8\tdir\\tx/a.tsv:3\ta\\\\xff\\tb\\r\\n\\xff\u00e9"
    assert len(line.split("\t")) == 3 and "\n" not in line
