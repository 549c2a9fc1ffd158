"""The runtime: everything a service built on this template keeps.

Lifecycle and signals, the HTTP listener and its middleware, the TCP server
framework, the pipeline engine and its sinks, the downstream client
machinery, the executors, metrics, the loop monitor, logging, request ids,
settings and the error base classes. It imports only the standard library
and third-party packages: never the domain (``service.domain``), the tools
(``service.tools``) or the wiring (``service.app``, ``service.cli``). An
import-linter contract in ``pyproject.toml`` keeps it so.
"""
