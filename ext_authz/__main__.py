import sys

from ext_authz.cli import main

sys.exit(main())
