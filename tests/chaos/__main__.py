"""``python -m chaos`` (with ``tests/`` on the path): see ``campaign.py`` or ``--help``."""

import sys

from .campaign import main

sys.exit(main())
