"""OpenAI-compatible HTTP server (``turboquant-api``, ``turboquant serve``).

Needs the optional dependencies of the ``server`` extra (FastAPI, uvicorn, pydantic); they are
imported when the server is built, not when ``turboquant`` is imported.
"""

from .main import add_arguments, build_parser, main, run

__all__ = ["add_arguments", "build_parser", "main", "run"]
