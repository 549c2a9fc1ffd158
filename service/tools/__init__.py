"""Tools that are not the running service: the downstream stub, the load-test client."""
