"""Scoring GAN checkpoints (or plain folders of images): FID, diversity, collapse onset, choice."""
