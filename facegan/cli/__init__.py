"""The ``facegan`` command: one module per subcommand, each parsing its options and calling the library.

Errors a user can cause arrive as :class:`~facegan.errors.FaceganError` and leave as one line on
stderr with exit status 1 (:func:`facegan.cli.common.friendly_errors`); click's usage errors exit
with 2; Ctrl-C during training saves a resume state and exits with 130.
"""

from __future__ import annotations

import click

from facegan.cli.common import mlflow_command
from facegan.cli.encoder import encoder
from facegan.cli.evaluate import evaluate
from facegan.cli.generate import generate
from facegan.cli.prepare import prepare
from facegan.cli.serve import serve
from facegan.cli.sync import sync
from facegan.cli.train import train

_MLFLOW = "{mlflow}"  # the typical session names the mlflow beside this interpreter, filled in when help is shown


class _Facegan(click.Group):
    def format_help_text(self, ctx, formatter):
        self.help = self.help.replace(_MLFLOW, mlflow_command())
        super().format_help_text(ctx, formatter)


@click.group(cls=_Facegan, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="facegan")
def main():
    """Train face GANs, score every checkpoint, and keep the best one before mode collapse.

    \b
    Typical session, offline first:
      facegan train --config experiments/quick.toml --evaluate random  # train, each checkpoint scored (offline)
      facegan encoder --image-size 32 --out encoder.pt2  # learn a feature space from the faces (offline)
      facegan evaluate --run latest --features export:encoder.pt2  # score the run in it (offline)
      {mlflow} ui --backend-store-uri sqlite:///mlflow.db  # browse, under "Model training"
      facegan serve --model models:/facegan-generator@best  # the face editor on the best checkpoint
    \b
    Standard FID, comparable with published figures, needs a download:
      facegan evaluate --run latest --features inception  # downloads the Inception weights once
    """


for _command in (prepare, train, evaluate, sync, encoder, generate, serve):
    main.add_command(_command)
