"""`python -m mambaout.cli`, as the cli.py module ran before it was a package."""
import sys

from . import main

sys.exit(main())
