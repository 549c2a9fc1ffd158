"""``python -m examples.minimal``: the same as ``python -m examples.minimal.app``."""

from examples.minimal.app import main

raise SystemExit(main())
