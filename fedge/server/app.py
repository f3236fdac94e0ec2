"""The ServerApp: builds the typed config once, then runs the whole pipeline into a run directory."""

from __future__ import annotations

import logging

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedge.core.config import ConfigError, RunConfig
from fedge.pipeline.rundir.paths import STOPPED_FILE, default_run_dir, staged_run_dir
from fedge.server.run import run_server

app = ServerApp()
log = logging.getLogger("fedge")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train, compress, sign, redistribute and report (outputs under the `out` setting)."""
    torch.set_num_threads(1)
    _show_progress()
    cfg = RunConfig.from_run_config(dict(context.run_config))
    final = default_run_dir(cfg)
    with staged_run_dir(final, resume=cfg.resume) as work:
        (work / STOPPED_FILE).unlink(missing_ok=True)
        try:
            run_server(grid, cfg, work)
        except ConfigError as err:  # e.g. a tier budget nothing meets, found after training
            (work / STOPPED_FILE).write_text(str(err))
            raise
    log.info("run directory: %s", final)


def _show_progress() -> None:
    """Send fedge's progress (rounds, stages, run directory) where Flower's log goes.

    Under `flwr run` that is the console and `flwr log`; `fedge simulate` has its own handler.
    """
    if logging.getLogger().handlers or log.handlers:
        return
    flwr_logger = logging.getLogger("flwr")
    for handler in flwr_logger.handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
