"""``python -m snncutoff_bench``: the same as the ``snncutoff-bench`` command."""

import sys

from snncutoff_bench.cli import main

sys.exit(main())
