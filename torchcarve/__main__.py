"""`python -m torchcarve` is the `carve` command."""
import sys

from .cli import main

sys.exit(main())
