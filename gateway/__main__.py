"""``python -m gateway`` runs the ``jwt-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
