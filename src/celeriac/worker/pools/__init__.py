"""Execution pools: prefork (default), threads, solo, asyncio and gevent."""
