"""`python -m pomp.demo OUT`: the demo run (`pomp.demo.run`)."""

import sys

from pomp.demo.run import main

sys.exit(main())
