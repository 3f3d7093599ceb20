import sys

from exoacq.cli import main

sys.exit(main())
