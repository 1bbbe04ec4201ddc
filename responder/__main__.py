"""Entry point for ``python -m responder``."""

from responder.entry import main

raise SystemExit(main())
