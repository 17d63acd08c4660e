import sys

from bayesnas.cli import main

sys.exit(main())
