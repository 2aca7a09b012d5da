"""``python -m bench``: run the benchmarks and write docs/benchmarks.md."""

import sys

from bench.cli import main

sys.exit(main())
