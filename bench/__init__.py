"""`make bench`: the performance figures of the pattern, measured on the embedded local stack.

Entry point `python -m bench.run`; results in `bench/results/latest.json`.
"""
