"""`python -m launcher.export runs/<name>`: the entry point named in the README; the export is
launcher/checkpoint/export.py."""
import sys

from launcher.checkpoint.export import main

if __name__ == "__main__":
    sys.exit(main())
