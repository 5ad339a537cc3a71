"""Builds cluster job specs from a frozen experiment config and submits them.

One module per backend (local processes, Kubernetes TFJob, Vertex AI, Cloud TPU VM, Dataflow). This
package imports neither `trainer` nor `preprocessing`: it names their modules in command lines, so a
job is a config file plus an argv list that can be printed (`--dry_run`) or run.
"""
