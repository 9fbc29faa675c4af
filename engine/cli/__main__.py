"""``python -m engine.cli``: the scanstream command without the console script."""
import sys

from engine.cli import main

sys.exit(main())
