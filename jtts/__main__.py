import sys

from jtts.cli import main

sys.exit(main())
