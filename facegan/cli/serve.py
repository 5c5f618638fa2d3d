"""``facegan serve``: the face editor on a model."""

from __future__ import annotations

import os
import sys

import click

from facegan.cli.common import MODEL_HELP, TRACKING_URI_HELP, echo, friendly_errors
from facegan.config import DEFAULT_MODEL_URI


@click.command()
@click.option("--model", "model_spec", default=DEFAULT_MODEL_URI, metavar="URI|FILE", help=MODEL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback makes the editor reachable from the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8666, show_default=True, help="Port (0: any free port).")
@click.option("--tracking-uri", help=TRACKING_URI_HELP)
@friendly_errors
def serve(model_spec, host, port, tracking_uri):
    """Open the face editor: a page with live sliders for the generator's principal directions
    and for every latent dimension, random faces, interpolation, truncation and PNG download.

    The directions (GANSpace: PCA of early generator features) are computed at the first start
    for a model and cached under $XDG_CACHE_HOME/facegan/directions (~/.cache by default).
    """
    import torch

    # Before anything runs in parallel (loading the model included): resizing torch's thread
    # pool after it has worked can abort the process at exit ("terminate called ...").
    torch.set_num_threads(1)
    from facegan.generate import load_model
    from facegan.serve import run_editor

    run_editor(load_model(model_spec, tracking_uri), host, port, log=echo)
    # Everything is closed and written (the directions cache atomically). Leave without the
    # interpreter's teardown: with the server's handler threads just gone, a native thread pool's
    # destructor sometimes aborted it ("terminate called without an active exception"), turning a
    # clean Ctrl-C into exit status 134.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
