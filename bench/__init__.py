"""Benchmarks: `python -m bench NAME [options]`, e.g. `python -m bench ingest --messages 200000`.

Each benchmark is a module here with `main(argv) -> dict`; harness.py holds what they share.
Results land in bench/results/NAME.json (gitignored).
"""
