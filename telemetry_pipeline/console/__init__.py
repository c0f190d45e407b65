"""The monitoring console: what the UI shows of a session and of the process (summary, overview, map, quality rules)."""
