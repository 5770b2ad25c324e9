"""``python -m unity_standin``: the same as ``tandem-unity-standin``."""

import sys

from unity_standin.cli import main

sys.exit(main())
