"""The shared contract of every stage: features, vocabulary, config and run-directory layout.

This package is the bottom layer: it imports no other package of this project.
"""
