"""``python -m edge``: the same commands as ``gapwatch``, limited to this package."""

from gapwatch.cli import main

raise SystemExit(main())
