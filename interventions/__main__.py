"""`python -m interventions` is the `modarb` command."""

import sys

from interventions.cli import main

sys.exit(main())
