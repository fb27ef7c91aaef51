"""``python -m poe_backend`` is ``poe-backend``."""

import sys

from poe_backend.cli import main

sys.exit(main())
