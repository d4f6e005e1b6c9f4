"""python -m rluf.report --run DIR [--out FILE] [--min-users 20] [--examples]"""

import sys

from .html import main

sys.exit(main())
