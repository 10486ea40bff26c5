"""The demo: ``python -m timeservice``, a server and its clients in one process."""

import sys

# First: it holds the signals while the rest loads.
from .programs import starting  # noqa: F401

# isort: split
from .programs.demo import main

if __name__ == "__main__":
    sys.exit(main())
