"""``python -m scanstream.cli``: the scanstream command without the console script."""
import sys

from scanstream.cli import main

sys.exit(main())
