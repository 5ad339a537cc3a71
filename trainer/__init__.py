"""The absl-flagged trainer: model, input pipeline, distribution, training loop and export."""
