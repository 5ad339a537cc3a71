"""metadata.json and the COMPLETED marker, computed inside the job from its own PCollections.

The statistics are Beam results, not runner metrics, so they are exact on every runner, and the
final step runs only once every shard, vocabulary and rejects file has been written (it takes
their paths as side inputs), so COMPLETED is the last file to appear. That step first checks
that every record read was written or rejected (`preprocessing.accounting`) and fails the job
if not.
"""

import datetime
import hashlib
import time

import apache_beam as beam
import tensorflow as tf

from pipeline import features, paths
from pipeline import metadata as metadata_lib
from preprocessing import accounting, records, vocabulary

_FINGERPRINT_MODULUS = 2**128


class InputFingerprint(beam.CombineFn):
    """`Line`s -> a digest of the multiset of raw records (independent of order and sharding)."""

    def create_accumulator(self):
        return 0

    def add_input(self, total, line: records.Line):
        digest = hashlib.sha256(line.raw).digest()[:16]
        return (total + int.from_bytes(digest, "big")) % _FINGERPRINT_MODULUS

    def merge_accumulators(self, totals):
        return sum(totals) % _FINGERPRINT_MODULUS

    def extract_output(self, total):
        return f"sha256-multiset:{total:032x}"


def _lengths(tokenized: records.TokenizedPair):
    return [("source", len(tokenized.source_ids)), ("target", len(tokenized.target_ids))]


class LengthHistogram(beam.PTransform):
    """`TokenizedPair`s -> ((side, length in pieces), pair count)."""

    def expand(self, tokenized):
        return tokenized | "Lengths" >> beam.FlatMap(_lengths) | beam.combiners.Count.PerElement()


def build_metadata(
    *,
    by_input: dict[str, dict[str, int]],
    written: dict[str, int],
    rejected: dict[str, int],
    vocabularies: dict[str, dict],
    histogram: list[tuple[tuple[str, int], int]],
    files: list[tuple[str, str]],
    settings: dict,
    input_fingerprint: str,
    elapsed_seconds: float,
) -> dict:
    """The metadata.json document (keys as `pipeline.metadata` readers expect).

    Args:
      by_input: `accounting.by_input`: records read, written and rejected per input.
      written: Examples written per split (missing splits count 0).
      rejected: Rejects per reason (missing reasons count 0).
      vocabularies: side -> {'size', 'fingerprint'}.
      histogram: ((side, length), count) entries.
      files: (split or 'rejects', path) of every shard file written.
      settings: What the job was asked to do: 'shared_vocab', 'max_length', 'input_paths',
        'beam_options' and 'flags'.
      input_fingerprint: `InputFingerprint` of the input.
      elapsed_seconds: Wall time from job start to this point.
    """
    lengths: dict[str, dict[str, int]] = {"source": {}, "target": {}}
    for (side, length), count in sorted(histogram):
        lengths[side][str(length)] = count
    return {
        "schema_version": features.SCHEMA_VERSION,
        "counts": {
            "read": sum(counts[accounting.READ] for counts in by_input.values()),
            "written": {split: written.get(split, 0) for split in paths.SPLITS},
            "rejected": {reason: rejected.get(reason, 0) for reason in records.REJECT_REASONS},
            "by_input": by_input,
        },
        "vocab": {"shared": settings["shared_vocab"], **vocabularies},
        "max_length": settings["max_length"],
        "length_histograms": lengths,
        "input": {"paths": settings["input_paths"], "fingerprint": input_fingerprint},
        "num_shards": {split: sum(name == split for name, _ in files) for split in paths.SPLITS},
        "beam_options": settings["beam_options"],
        "flags": settings["flags"],
        "elapsed_seconds": round(elapsed_seconds, 1),
    }


def _finish(_, layout, settings, start_time, *, accounts, sent_to_files, in_files, **results):
    vocabulary.check_learned(results["vocabularies"])
    table = accounting.by_input(accounts)
    accounting.check(table, sent_to_files, in_files)
    metadata = build_metadata(
        by_input=table,
        settings=settings,
        elapsed_seconds=time.time() - start_time,
        **results,
    )
    metadata_lib.write_metadata(layout, metadata)
    with tf.io.gfile.GFile(layout.completed, "w") as f:
        f.write(datetime.datetime.now(datetime.UTC).isoformat() + "\n")
    return metadata


class WriteMetadata(beam.PTransform):
    """Writes metadata.json then COMPLETED, after every file it is given has been written.

    Applied to the pipeline; outputs the metadata dict.
    """

    def __init__(
        self,
        layout: paths.DatasetLayout,
        settings: dict,
        start_time: float,
        results: dict[str, beam.PCollection],
    ):
        """Creates the final step.

        Args:
          layout: Where to write.
          settings: See `build_metadata`.
          start_time: `time.time()` when the job started.
          results: PCollections: 'input_fingerprint' (a singleton); 'written' and 'rejected'
            ((split or reason, count) pairs); 'vocabularies' ((side, info) pairs);
            'sent_to_files' and 'in_files' ((file set, records) pairs: sent to the sink, found
            in its files); 'accounts' (((kind, input), count) entries of `accounting`);
            'histogram'; 'files' ((file set, path) of every file written).
        """
        super().__init__()
        self._layout = layout
        self._settings = settings
        self._start_time = start_time
        self._results = results

    def expand(self, pbegin):
        views = {}
        for name, pcoll in self._results.items():
            if name == "input_fingerprint":
                views[name] = beam.pvalue.AsSingleton(pcoll)
            elif name in ("written", "rejected", "vocabularies", "sent_to_files", "in_files"):
                views[name] = beam.pvalue.AsDict(pcoll)
            else:
                views[name] = beam.pvalue.AsList(pcoll)
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(_finish, self._layout, self._settings, self._start_time, **views)
        )
