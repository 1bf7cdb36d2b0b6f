"""`python -m broker`: the `broker` command line, where the script is not on PATH."""
import sys

from broker.cli import main

sys.exit(main())
