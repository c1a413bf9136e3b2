"""``python -m app.cli``: the ``lethe`` command."""

import sys

from app.cli import main

sys.exit(main())
