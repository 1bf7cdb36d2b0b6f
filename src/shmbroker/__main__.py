"""`python -m shmbroker`: the `broker` command line, where the script is not on PATH."""
import sys

from shmbroker.cli import main

sys.exit(main())
