"""Benchmarks: the modules behind ``medsr bench NAME`` (each defines ``add_arguments`` and ``run``;
``pipelines/bench_cli.py`` is their command line) and standalone scripts (``table3.py``,
``patch_read.py``, ``train_rss.py``, ``run_all.sh``).

Benchmarks report ratios measured within one run (these machines are noisy); they are never
timed tests.
"""
