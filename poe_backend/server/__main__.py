"""``python -m poe_backend.server`` is ``poe-backend serve`` without loading the other
subcommands (the tests and the demo start the backend this way)."""

import sys

from poe_backend.server.cli import main

sys.exit(main())
