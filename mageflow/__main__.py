"""``python -m mageflow ...`` works like the ``mageflow`` command."""

from mageflow.cli import main

main()
