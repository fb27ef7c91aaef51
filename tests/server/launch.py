"""Start ``poe-backend serve`` with the test task registered (see toytask.register)."""

import sys

from tests.server.toytask import register

register()

from poe_backend.server.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
