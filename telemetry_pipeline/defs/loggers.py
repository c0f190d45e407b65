"""`console`: every run's console logger, one line per event. Dagster's default prints an error's whole stack trace
to the terminal; a Ctrl-C of `make run` then filled it with tracebacks of the runs it interrupted. The stack trace
stays in the run's log in the UI (the event log keeps the whole error); the terminal gets what happened, once."""

from __future__ import annotations

import logging
import re
import sys

import dagster as dg

MAX_LINE = 400  # characters of one event's line; its run's log has the rest
_FRAME = re.compile(r"^(\s+\S.*|Stack Trace:)$")  # a stack trace's lines: its header, indented frames and code
# Dagster gives a job's loggers their run config only when the run config names them: each job's default run config
# does (the launchpad shows it), and the schedule's runs name it in theirs.
LOGGER_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


_CAUSED_BY = "The above exception was caused by the following exception:"


class OneLine(logging.Formatter):
    """`<time> - <logger> - <LEVEL> - <the event's message up to its stack trace, on one line>`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s - %(name)s - %(levelname)s - %(message)s", datefmt="%Y-%m-%d %H:%M:%S %z")

    def formatMessage(self, record: logging.LogRecord) -> str:
        kept = [line for line in record.message.splitlines() if not _FRAME.match(line)]
        text = " ".join(" ".join(kept).replace(_CAUSED_BY, "caused by:").split())
        if len(text) > MAX_LINE:
            text = text[: MAX_LINE - 1] + "…"
        return self._style.format(_with_message(record, text))

    def formatException(self, ei: object) -> str:
        return ""  # a traceback attached to the record: the run's log in the UI has it

    def formatStack(self, stack_info: str) -> str:
        return ""


def _with_message(record: logging.LogRecord, text: str) -> logging.LogRecord:
    copy = logging.makeLogRecord(record.__dict__)
    copy.message = text
    return copy


@dg.logger(
    config_schema={
        "log_level": dg.Field(str, is_required=False, default_value="INFO", description="The logger's threshold."),
        "name": dg.Field(str, is_required=False, default_value="dagster", description="The logger's name."),
    },
    description="One line per event on the console, without stack traces (the run's log in the UI has them).",
)
def one_line_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    logger = logging.Logger(config["name"], level=logging.getLevelName(config["log_level"].upper()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    logger.addHandler(handler)
    return logger
