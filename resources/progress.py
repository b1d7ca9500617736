"""A compact logger for `traitflow run`: the assets' own progress lines, nothing else.

Dagster's console logger prints every framework event (and a traceback for each failure) to
stderr; on the command line the runner reports failures itself, in one line.
"""

import logging
import sys

import dagster as dg

LOG_RECORD_METADATA_ATTR = "dagster_meta"


class _UserMessagesOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, LOG_RECORD_METADATA_ATTR, None)
        if not meta or meta.get("dagster_event") is not None:
            return False  # framework events (step start, materialization, failure): the runner summarises them
        record.msg, record.args = meta.get("orig_message", record.msg), ()
        # A check step records its evaluations per partition and yields no per-step result, by
        # design (assets/checks.py); Dagster's note about the missing outputs says nothing to a user.
        return not (str(record.msg).startswith("op '") and "did not yield or return expected outputs" in str(record.msg))


@dg.logger(description="Prints the assets' progress lines to stdout, without framework events.")
def progress_logger(init_context: "dg.InitLoggerContext") -> logging.Logger:
    logger = logging.getLogger("traitflow.progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        handler.addFilter(_UserMessagesOnly())
        logger.addHandler(handler)
    return logger
