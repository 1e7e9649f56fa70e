"""Benchmarks for ``klarna-om bench`` (see BENCHMARKS.md): reference apps, load generator, harness.

Runs from a source checkout only: the harness drives the app against the fakes in ``plugin/testing``.
"""
