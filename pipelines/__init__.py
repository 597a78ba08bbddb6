"""Orchestration: the ``medsr`` command line and the train / infer / evaluate / demo pipelines."""
