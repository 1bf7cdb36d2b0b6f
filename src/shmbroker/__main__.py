"""`python -m shmbroker`: the `shmbroker` command line, where the script is not on PATH."""
import sys

from shmbroker.cli import main

sys.exit(main())
