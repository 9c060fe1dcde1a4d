import sys

from ecoserve.cli import main

sys.exit(main())
