"""A blank service on the runtime alone: one route, one pipeline stage, one TCP line handler."""
