import sys

from difflung.cli import main

sys.exit(main())
