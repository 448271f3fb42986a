"""Benchmarks for the imagegen gateway: ratios against a baseline measured in the same run.

Run ``python bench/run.py [--quick]``; see ``bench/README.md``.
"""
