"""The included load-test client (independent of the service core)."""
