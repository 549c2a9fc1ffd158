"""`python -m service` is the same as the `service` console script."""

from service.cli import main

raise SystemExit(main())
