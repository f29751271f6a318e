"""All benchmarks in one table: `python benchmarks/run_all.py [RUN] [--quick] ...` (the flags of `avatar bench`)."""

import sys

from avatar.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
