"""Services built on the runtime alone (see examples/minimal/README.md)."""
