"""``python -m gapwatch`` is the same as the ``gapwatch`` console script."""

from gapwatch.cli import main

raise SystemExit(main())
