"""The demo: ``python -m timeservice``, a server and its clients in one process."""

import sys

from .programs.demo import main

if __name__ == "__main__":
    sys.exit(main())
