"""The application: the export flow (fetch, normalise, render, upload a set of sessions) and the health check."""
