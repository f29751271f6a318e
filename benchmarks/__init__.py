"""Component benchmarks (`bench_*.py`, each with `run(quick) -> rows`) that `avatar bench` runs, installed as
`avatar.benchmarks`; each also runs alone, `python -m avatar.benchmarks.bench_NAME`."""
