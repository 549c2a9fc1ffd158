"""An asyncio microservice template: aiohttp API, TCP line protocol, bounded pipeline."""

__version__ = "0.1.0"
