r"""Build the English-German parallel corpus from Debian's LibreOffice help packages.

The offline help of LibreOffice ships the same HTML pages in every language, and each
translatable paragraph, heading and table cell carries the same ``par_id``/``hd_id`` element
id in every language. Joining the English and German pages on (relative path, element id)
therefore yields real, human-translated sentence pairs without any automatic alignment.

Typical use (packages already unpacked)::

    python build_corpus.py \\
        --help_root_en /tmp/corpus_build/root/usr/share/libreoffice/help/en-US \\
        --help_root_de /tmp/corpus_build/root/usr/share/libreoffice/help/de \\
        --output en-de.libreoffice-help.tsv.gz

or let the script fetch and unpack the packages itself (needs a prior ``apt-get update``)::

    python build_corpus.py --download /tmp/corpus_build/debs --output en-de.libreoffice-help.tsv.gz

Only the Python standard library is used, so the corpus can be rebuilt on any machine that
reaches the Debian archive.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import subprocess
import sys
import time
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

KEPT_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "td"})
ID_PREFIXES = ("par_id", "hd_id")
# The help marks every variant of a per-platform/per-application switch as hidden; only the
# fallback variant's id starts with this prefix (e.g. "Ctrl" rather than the macOS "Command").
DEFAULT_VARIANT_PREFIX = "default"
PACKAGES = ("libreoffice-help-en-us", "libreoffice-help-de")
HELP_SUBDIR = Path("usr/share/libreoffice/help")
# No-break and other fixed-width spaces would survive naive whitespace handling in tokenizers.
SPACE_LIKE = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2007": " "})

DROP_REASONS = ("no German counterpart", "empty side", "identical sides", "duplicate pair")

Key = tuple[str, str, int]


class HelpPageParser(HTMLParser):
    """Extract the visible text of id-bearing paragraphs, headings and cells of one page.

    Text inside hidden, non-default switch variants is skipped so that each segment reads as
    the default (Windows/Linux) help does; the default variant is kept although it is also
    marked hidden, because dropping it would lose key names such as "Ctrl".
    """

    def __init__(self) -> None:
        """Start with no segments; ``segments`` collects (element id, raw text) in page order."""
        super().__init__(convert_charrefs=True)
        self.segments: list[tuple[str, str]] = []
        self._tag: str | None = None
        self._element_id = ""
        self._nesting = 0
        self._parts: list[str] = []
        self._span_skips: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Open a segment, or track nested spans and line breaks inside one."""
        attributes = dict(attrs)
        if self._tag is None:
            element_id = attributes.get("id") or ""
            if tag in KEPT_TAGS and element_id.startswith(ID_PREFIXES):
                self._tag, self._element_id = tag, element_id
            return
        if tag == self._tag:
            self._nesting += 1
        elif tag == "span":
            self._span_skips.append(is_non_default_variant(attributes))
        elif tag == "br":
            self._parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        """Close spans, and close the segment when its own end tag is reached."""
        if self._tag is None:
            return
        if tag == "span" and self._span_skips:
            self._span_skips.pop()
        elif tag == self._tag:
            if self._nesting:
                self._nesting -= 1
            else:
                self._finish_segment()

    def handle_data(self, data: str) -> None:
        """Keep text that is inside a segment and not inside a skipped variant."""
        if self._tag is not None and not any(self._span_skips):
            self._parts.append(data)

    def _finish_segment(self) -> None:
        self.segments.append((self._element_id, "".join(self._parts)))
        self._tag = None
        self._parts = []
        self._span_skips = []


def is_non_default_variant(attributes: dict[str, str | None]) -> bool:
    """Tell whether a span is a hidden switch variant other than the default one."""
    if "hidden" not in attributes:
        return False
    return not (attributes.get("id") or "").startswith(DEFAULT_VARIANT_PREFIX)


def normalise(text: str) -> str:
    """Return NFC text with fixed-width spaces replaced and all whitespace runs collapsed.

    Collapsing also removes tabs and newlines, which keeps every field on one TSV line.
    """
    return " ".join(unicodedata.normalize("NFC", text).translate(SPACE_LIKE).split())


def extract_segments(help_root: Path) -> tuple[dict[Key, str], int]:
    """Map (relative path, element id, occurrence) to normalised text for one language.

    The occurrence index keeps apart the few ids that a page repeats (embedded sections),
    which appear in the same order in every language.
    """
    segments: dict[Key, str] = {}
    pages = sorted(help_root.glob("text/**/*.html"))
    for page in pages:
        parser = HelpPageParser()
        parser.feed(page.read_text(encoding="utf-8"))
        parser.close()
        relative = page.relative_to(help_root).as_posix()
        seen: collections.Counter[str] = collections.Counter()
        for element_id, text in parser.segments:
            segments[(relative, element_id, seen[element_id])] = normalise(text)
            seen[element_id] += 1
    return segments, len(pages)


def drop_reason(source: str, target: str | None, kept: set[tuple[str, str]]) -> str | None:
    """Name why an English segment yields no new training pair, or None if it does.

    Identical sides are mostly untranslated names, numbers and code, which teach nothing.
    """
    if target is None:
        return "no German counterpart"
    if not source or not target:
        return "empty side"
    if source == target:
        return "identical sides"
    if (source, target) in kept:
        return "duplicate pair"
    return None


def align(
    english: dict[Key, str], german: dict[Key, str]
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Join both languages on their keys; return sorted unique pairs and drop counts by reason."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept: set[tuple[str, str]] = set()
    for key, source in english.items():
        target = german.get(key)
        reason = drop_reason(source, target, kept)
        if reason is None:
            kept.add((source, target))
        else:
            dropped[reason] += 1
    return sorted(kept), dropped


def write_tsv_gz(pairs: list[tuple[str, str]], output: Path) -> None:
    """Write ``english<TAB>german`` lines; mtime=0 and no stored name make rebuilds identical."""
    body = "".join(f"{source}\t{target}\n" for source, target in pairs).encode("utf-8")
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        output.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as compressed,
    ):
        compressed.write(body)


def download_packages(work_dir: Path) -> tuple[Path, Path]:
    """Fetch and unpack the help packages into a new ``work_dir`` without installing them.

    ``apt-get install`` would pull in about 19 packages; downloading and unpacking the two
    architecture-independent .deb files is all the corpus needs. The work dir must be new or
    empty so that a stale package version cannot be mixed into the unpacked tree.
    """
    if work_dir.exists() and any(work_dir.iterdir()):
        raise SystemExit(f"--download needs a new or empty directory: {work_dir}")
    work_dir.mkdir(parents=True, exist_ok=True)
    command = ["apt-get", "download", "-o", "APT::Sandbox::User=root", *PACKAGES]
    subprocess.run(command, cwd=work_dir, check=True)
    unpacked = work_dir / "root"
    for deb in sorted(work_dir.glob("*.deb")):
        print(f"unpacking {deb_field(deb, 'Package')} {deb_field(deb, 'Version')}")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    help_dir = unpacked / HELP_SUBDIR
    return help_dir / "en-US", help_dir / "de"


def deb_field(deb: Path, field: str) -> str:
    """Read one control field of a .deb, so the summary records the exact package version."""
    command = ["dpkg-deb", "-f", str(deb), field]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; either both help roots or --download must be given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--help_root_en", type=Path, help="unpacked .../help/en-US folder")
    parser.add_argument("--help_root_de", type=Path, help="unpacked .../help/de folder")
    parser.add_argument(
        "--download",
        type=Path,
        metavar="WORK_DIR",
        help="apt-get download and unpack both packages here and use them as help roots",
    )
    parser.add_argument("--output", type=Path, required=True, help="output path ending .tsv.gz")
    args = parser.parse_args(argv)
    roots = (args.help_root_en, args.help_root_de)
    if args.download is not None and roots != (None, None):
        parser.error("--download unpacks its own help roots; drop --help_root_en/--help_root_de")
    if args.download is None and None in roots:
        parser.error("give both --help_root_en and --help_root_de, or --download WORK_DIR")
    if not args.output.name.endswith(".tsv.gz"):
        parser.error("--output must end with .tsv.gz")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build the corpus and print a short summary."""
    args = parse_args(argv)
    started = time.monotonic()
    if args.download is not None:
        args.help_root_en, args.help_root_de = download_packages(args.download)
    english, english_pages = extract_segments(args.help_root_en)
    german, german_pages = extract_segments(args.help_root_de)
    pairs, dropped = align(english, german)
    write_tsv_gz(pairs, args.output)
    print(f"files parsed: {english_pages} English, {german_pages} German")
    print(f"segments: {len(english)} English, {len(german)} German")
    print(f"pairs kept: {len(pairs)} -> {args.output}")
    for reason, count in dropped.items():
        print(f"dropped ({reason}): {count}")
    print(f"took {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
