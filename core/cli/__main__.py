"""``python -m core.cli``: the ``flexcal`` command without the console script."""

import sys

from core.cli import main

sys.exit(main())
