import sys

from cwhook.cli.main import main

sys.exit(main())
