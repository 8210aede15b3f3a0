"""`python -m torchcarve` runs `carve`."""
import sys

from .cli import main

sys.exit(main())
