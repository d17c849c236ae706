import sys

from workbench.app import main
from workbench.core.common.threads import finish_process

sys.exit(finish_process(main()))
