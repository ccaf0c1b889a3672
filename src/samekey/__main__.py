"""``python -m samekey``: the same as the ``samekey`` command."""

import sys

from .cli import main

sys.exit(main())
