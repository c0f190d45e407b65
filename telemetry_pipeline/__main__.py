import sys

from telemetry_pipeline.cli import main

sys.exit(main())
