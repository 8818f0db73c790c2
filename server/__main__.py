"""`python -m server` is `nomoat`."""

import sys

from .cli import main

sys.exit(main())
