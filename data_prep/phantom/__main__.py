"""``python -m data_prep.phantom``."""
import sys

from data_prep.phantom.cli import main

sys.exit(main())
