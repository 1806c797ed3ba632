"""``python -m carina``: the same as the ``carina`` command."""

import sys

from carina.cli import main

sys.exit(main())
