import sys

from dept.cli import main

sys.exit(main())
