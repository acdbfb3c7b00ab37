"""``python -m retarget``: the same as the ``retarget`` command."""

import sys

from retarget.cli import main

sys.exit(main())
