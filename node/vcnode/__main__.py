import sys

from vcnode.bootstrap import main

sys.exit(main())
