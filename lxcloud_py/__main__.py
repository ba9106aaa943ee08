import sys

from lxcloud_py.cli import main

sys.exit(main())
