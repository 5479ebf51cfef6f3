import sys

from devicefit.cli import main

sys.exit(main())
