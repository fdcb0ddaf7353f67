"""Benchmarks measured against a reference run in the same invocation (SPEC §10).

``python -m benchmarks.aggregation`` (``make bench``) needs only numpy and ``rounds.aggregation``;
Flower (the ``bench`` extra) is measured alongside when it is installed.
"""
