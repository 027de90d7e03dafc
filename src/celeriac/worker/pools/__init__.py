"""Execution pools: prefork (default), threads, solo and asyncio."""
