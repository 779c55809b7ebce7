"""``python -m dpa1`` runs the command-line interface (also used by ``torchrun -m dpa1``)."""

import sys

from dpa1.cli.main import main

sys.exit(main())
