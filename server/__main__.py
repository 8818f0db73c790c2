"""`python -m nomoat` is `nomoat`."""

import sys

from .cli import main

sys.exit(main())
