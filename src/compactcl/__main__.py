import os
import sys

# `python -m compactcl` puts the current folder first on sys.path, so a module file lying there
# (say a `timm.py`, or one a recipe's `module:X:f` names) would be imported — and run — in place
# of the installed one. The console script has no such entry; make `-m` behave the same. A folder
# put on PYTHONPATH on purpose comes later in sys.path and stays.
if sys.path and not sys.flags.safe_path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from compactcl.cli.main import main  # noqa: E402

sys.exit(main())
