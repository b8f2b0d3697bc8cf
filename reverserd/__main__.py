"""Allow ``python -m reverserd``."""

from reverserd.cli import main

raise SystemExit(main())
