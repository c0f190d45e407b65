"""Agora, the workflow platform (docs/SOURCES.md, `agora`): one session = one workflow execution."""
