"""``python -m gnca`` runs the command line."""

import sys

from gnca.cli import main

sys.exit(main())
