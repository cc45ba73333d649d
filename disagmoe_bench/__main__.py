"""`python -m disagmoe_bench`: the command-line benchmark (`disagmoe_bench.bench`)."""

import sys

from disagmoe_bench.bench import main

sys.exit(main())
