"""Revorch over the Model Context Protocol: its MCP server (``revorch mcp``) and the MCP
client its agents use for lookups (docs/mcp.md)."""
