"""``facegan sync RUN_ID``: send what a training run kept locally while its store was away."""

from __future__ import annotations

from pathlib import Path

import click

from facegan.cli.common import TRACKING_URI_HELP, echo, friendly_errors
from facegan.errors import FaceganError


@click.command()
@click.argument("run_id")
@click.option("--folder", type=click.Path(file_okay=False), metavar="DIR",
              help="The run's unsent folder [default: ./facegan-unsent-RUN_ID, where `facegan train` left it].")
@click.option("--tracking-uri", help=TRACKING_URI_HELP)
@friendly_errors
def sync(run_id, folder, tracking_uri):
    """Send what a training run could not send while its tracking store was away.

    A run that ends while the store is away waits --set tracking.send_timeout seconds (default
    120), then keeps what is left (metrics, sample grids, checkpoints, the resume state, the
    run's status) in ./facegan-unsent-RUN_ID/. This sends it, in the order it was logged, and
    removes the folder; nothing already in the store is sent twice. `facegan train --resume`
    and `facegan evaluate --run` of that run do the same first.
    """
    from facegan import tracking

    path = Path(folder) if folder else tracking.unsent_folder(run_id)
    if not path.is_dir():
        raise FaceganError(f"no unsent folder {path}/ for run {run_id}: nothing to send")
    client = tracking.connect(tracking_uri)
    tracking.get_run(client, run_id)
    sent, left = tracking.sync_unsent(client, run_id, path)
    if left:
        raise FaceganError(f"sent {sent} records; {left} are still in {path}/ (run facegan sync {run_id} again "
                           "once the store answers)")
    echo(f"sent {sent} records of run {run_id} to {tracking.resolve_tracking_uri(tracking_uri)}")
