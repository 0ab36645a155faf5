"""``python -m mcmia_helpers``: see :mod:`mcmia_helpers.cli`."""

import sys

from mcmia_helpers.cli import main

sys.exit(main())
