"""Run LM Workbench: ``python main.py`` opens the window; subcommands run headless."""

import sys

from workbench.app import main

if __name__ == "__main__":
    sys.exit(main())
