"""Raw payloads -> the canonical model (`sessions`, `events`), one module per payload shape."""
