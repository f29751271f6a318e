# Two commands do all set-up (each installs what it needs into .venv/, idempotently):
#   make demo   the main job end to end on the shared example data
#   make test   lint, then the test suite (CPU; CUDA tests are skipped without a GPU)
#   make lint   ruff: lint and format check (line length 120, configured in pyproject.toml)
.PHONY: setup demo test lint bench
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/avatar demo

test: setup lint
	bash scripts/setup_test_tools.sh
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: setup
	.venv/bin/avatar bench
