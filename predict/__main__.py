import sys

from predict.batch import main

sys.exit(main())
