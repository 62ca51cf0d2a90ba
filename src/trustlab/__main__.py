import sys

from trustlab.cli import main

sys.exit(main())
