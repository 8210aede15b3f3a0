"""`python -m torchcarve.cli` runs `carve`."""
import sys

from . import main

sys.exit(main())
