"""Benchmarks behind ``medsr bench NAME``. Each module defines ``add_arguments`` and ``run``.

Benchmarks report ratios measured within one run (these machines are noisy); they are never
timed tests.
"""
