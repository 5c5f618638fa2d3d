"""experiments/probe_features.py: nearest-neighbour agreement against scikit-learn's classifier."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from experiments import probe_features as probe


def test_neighbour_agreement_matches_scikit_learn():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 3
    real_labels = {"cluster": rng.integers(0, 4, 300)}
    held_labels = {"cluster": rng.integers(0, 4, 100)}
    real = centres[real_labels["cluster"]] + rng.normal(size=(300, 8)) * 2
    held = centres[held_labels["cluster"]] + rng.normal(size=(100, 8)) * 2
    for k in (1, 10):
        reference = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(real, real_labels["cluster"])
        expected = float((reference.predict(held) == held_labels["cluster"]).mean())
        got = probe.neighbour_agreement(real, real_labels, held, held_labels, k)["cluster"]
        assert got == expected
    assert 0.3 < expected < 1.0  # overlapping clusters: neither trivial nor hopeless


def test_labels_of_both_domains_are_consistent():
    _, real_labels, held, held_labels = probe.digits()
    assert set(real_labels) == {"red", "green", "blue", "mode"}
    modes = held_labels["mode"]
    np.testing.assert_array_equal(100 * held_labels["red"] + 10 * held_labels["green"] + held_labels["blue"], modes)
    assert held.shape == (probe.NUM_HELD_OUT, 3, 32, 32)


def test_encoder_epochs_reach_the_encoders_training(monkeypatch, capsys):
    trained = []

    def recording_train(images, settings, **kwargs):
        trained.append(settings.epochs)
        return real_train(images, settings, **kwargs)

    real_train = probe.train_encoder
    monkeypatch.setattr(probe, "train_encoder", recording_train)
    result = probe.main(["--domains", "faces", "--features", "encoder", "--encoder-epochs", "1"])
    assert trained == [1]
    assert set(result) == {"faces/encoder"}
    assert 0.0 <= result["faces/encoder"]["k=1"]["mode"] <= 1.0
    with pytest.raises(SystemExit):
        probe.main(["--encoder-epochs", "0"])
    assert "--encoder-epochs must be at least 1" in capsys.readouterr().err
