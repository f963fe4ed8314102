"""sessions-mcp: agent sessions (Factory, Fabro, or a local store) as MCP tools, resources and prompts.

Importing this package is cheap: the server, the backends and their drivers load only when used.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
