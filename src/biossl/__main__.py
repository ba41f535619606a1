"""``python -m biossl``: the same command line as the ``biossl`` script."""
import sys

from biossl.cli import main

sys.exit(main())
