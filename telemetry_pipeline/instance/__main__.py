"""`python -m telemetry_pipeline.instance [COMMAND...]`: prepare the Dagster home; with a command, run it with our
Dagster settings (`RUN_BOOKKEEPING`) in its environment, stopped within a bound on Ctrl-C or SIGTERM (`stopping`).
`make run` and `make deploy` start Dagster's processes this way; it writes `<home>/settings.env` for the CLI
(settings.py)."""

import os
import sys

from telemetry_pipeline.instance import dagster_environment, prepare_dagster_home
from telemetry_pipeline.instance.stopping import supervise
from telemetry_pipeline.settings import from_environment, write_settings_file

settings = from_environment()
prepare_dagster_home(settings.dagster_home)
write_settings_file(settings)  # for the CLI in another shell: the same sources, destination and warehouse
if len(sys.argv) > 1:
    env = {**os.environ, **dagster_environment(settings.run_bookkeeping)}
    sys.exit(supervise(sys.argv[1:], env, settings.dagster_home))
