"""`python -m pomp.cli` (how torchrun launches pomp): the `pomp` command."""

import sys

from pomp.cli import main

sys.exit(main())
