"""`python -m batch ...`: the batch job, as `ray job submit -- python -m batch ...` runs it."""

import sys

from batch.job import main

sys.exit(main())
