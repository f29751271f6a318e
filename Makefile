# Two commands do all set-up (each installs what it needs into .venv/, idempotently):
#   make demo   the main job end to end on the shared example data
#   make test   the test suite (CPU; CUDA tests are skipped without a GPU)
.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/avatar demo

test: setup
	bash scripts/setup_browser.sh
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python benchmarks/run_all.py
