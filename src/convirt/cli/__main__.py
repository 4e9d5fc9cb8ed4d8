"""``python -m convirt.cli``: the ``convirt`` command."""

import sys

from convirt.cli import main

sys.exit(main())
