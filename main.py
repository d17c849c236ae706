"""Run LM Workbench: ``python main.py`` opens the window; subcommands run headless."""

import sys

from workbench.app import main
from workbench.core.common.threads import finish_process

if __name__ == "__main__":
    sys.exit(finish_process(main()))
