"""The Apache Beam preprocessing job: raw parallel text to sharded TFRecords and vocabularies.

Entry point: `preprocessing.main` (console script `nmt-preprocess`). Imports `pipeline`, never
`trainer`.
"""
