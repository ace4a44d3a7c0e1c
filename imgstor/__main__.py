"""``python3 -m imgstor ...`` is ``imgstor ...``."""
import sys

from imgstor.cli import entry

sys.exit(entry())
