"""Benchmarks for ``klarna-om bench`` (see BENCHMARKS.md): reference apps, load generator, harness, client CPU.

Part of the installed package: the harness drives the app against the fakes in ``plugin/testing``.
"""
