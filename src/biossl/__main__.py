"""``python -m biossl`` = the ``biossl`` command."""
import sys

from biossl.cli import main

sys.exit(main())
