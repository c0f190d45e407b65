"""Policy as data: each team's playbook for its agents (`playbooks.py`), checked against every exported session in
DuckDB (`conformance.py`); the verdict lands in both Signavio tables and in the console."""
