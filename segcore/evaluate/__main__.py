import sys

from segcore.evaluate.folders import main

sys.exit(main())
