"""``python -m bench``: every benchmark, then bench/results.json and bench/RESULTS.md."""

import sys

from bench.run_all import main

sys.exit(main())
