import sys

from workbench.app import main
from workbench.core.threads import finish_process

sys.exit(finish_process(main()))
