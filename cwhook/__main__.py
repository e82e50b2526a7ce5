import sys

from cwhook.cli import main

sys.exit(main())
