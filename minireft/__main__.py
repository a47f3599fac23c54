"""`python -m minireft ...` runs the `minireft` command."""

import sys

from minireft.cli import main

sys.exit(main())
