"""``python -m index``: see :mod:`index.cli`."""
import sys

from .cli import main

sys.exit(main())
