import sys

from pvfront.cli import main

sys.exit(main())
