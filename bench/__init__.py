"""Benchmarks of reverserd against the real test bed; run them with ``python -m bench.<name>``.

See ``bench/README.md`` for what each one measures, its targets and how to run it.
"""
