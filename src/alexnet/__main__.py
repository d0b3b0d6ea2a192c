"""`python -m alexnet` (and `torchrun -m alexnet`)."""

import sys

from .cli import main

sys.exit(main())
