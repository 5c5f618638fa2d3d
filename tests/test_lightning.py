"""facegan.lightning: the Judge as a Lightning callback (the optional `lightning` extra)."""

from __future__ import annotations

import csv

import pytorch_lightning as pl
import torch
from helpers import PoolGenerator, collapsing_history
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from evaluation.features import get_extractor
from facegan.judge import Judge
from facegan.lightning import JudgeCallback
from facegan.synthetic import synthetic_faces


class CollapsingGan(pl.LightningModule):
    """A LightningModule whose generator "training" makes is the collapsing history's, epoch by epoch."""

    def __init__(self, history):
        super().__init__()
        self.history = history
        self.netG = PoolGenerator(600)
        self.weight = nn.Parameter(torch.zeros(1))

    def on_train_epoch_start(self):
        trained = self.history[self.current_epoch + 1]
        self.netG.faces, self.netG.noise = trained.faces, trained.noise

    def training_step(self, batch, batch_idx):
        return (self.weight - batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)


def test_the_callback_stops_the_trainer_at_a_confirmed_collapse_and_logs_the_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    judge = Judge(synthetic_faces(300, 32, seed=0), features=get_extractor("random"), num_samples=150,
                  stop_on_collapse=True)
    callback = JudgeCallback(judge, generator="netG")
    trainer = pl.Trainer(max_epochs=10, accelerator="cpu", devices=1, callbacks=[callback],
                         logger=CSVLogger(tmp_path, name="gan", version=0), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(CollapsingGan(collapsing_history(onset=6)))

    # Lightning counts epochs from 0: the history's epoch 6 is its epoch 5, confirmed at 6, and training stops there.
    assert [v.epoch for v in callback.verdicts] == list(range(7))
    last = callback.verdicts[-1]
    assert last.should_stop and last.collapse_epoch == 5 and last.best_epoch < 5
    assert trainer.current_epoch == 7  # 7 epochs trained of 10
    assert judge.result.best_epoch == last.best_epoch

    with open(tmp_path / "gan" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("random/fid")]
    assert [int(row["step"]) for row in rows] == list(range(7))
    assert [float(row["random/fid"]) for row in rows] == [v.scores["fid"] for v in callback.verdicts]
