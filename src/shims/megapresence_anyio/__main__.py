"""``python -m megapresence_anyio``: the ``megapresence`` command, for when it is not on PATH."""

import sys

from ._cli import main

sys.exit(main())
