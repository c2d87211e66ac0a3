"""``python -m perdure.cli``: the same as the ``perdure`` command."""

import sys

from perdure.cli._main import main

sys.exit(main())
