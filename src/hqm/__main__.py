import sys

from hqm.cli import main

sys.exit(main())
