"""What the registered model means: one version per checkpoint, and aliases that move only to a
better choice in the same feature space, against the same real images, at the same sample count
(facegan/tracking/registry.py). End to end through the real CLI on a sqlite store; the rule that
picks an alias's holder also on its own."""

import json
import subprocess

import pytest
import torch
from mlflow import MlflowClient

from conftest import FACEGAN, TINY_TRAIN, run_id_of
from facegan.tracking.registry import VersionScore, alias_for_space, holder

NAME = "registry-test"
pytestmark = pytest.mark.slow  # trains two runs


@pytest.fixture(scope="module")
def two_runs(tracking_uri, tmp_path_factory):
    """Two tiny runs (different seeds), three checkpoints each, and a small feature network as a .pt2."""
    folder = tmp_path_factory.mktemp("registry")
    run_ids = []
    for seed in (0, 1):
        done = subprocess.run([FACEGAN, "train", *TINY_TRAIN, "--epochs", "3", "--checkpoint-every", "1",
                               "--seed", str(seed), "--experiment", "registry", "--tracking-uri", tracking_uri],
                              cwd=folder, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        run_ids.append(run_id_of(done))
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                  torch.nn.Flatten()).eval()
    program = torch.export.export(network, (torch.zeros(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, folder / "net.pt2", extra_files={"input_size": "32"})
    return run_ids, folder / "net.pt2"


def evaluate(cli, tracking_uri, run_id, features, *extra):
    proc = cli("evaluate", "--run", run_id, "--features", features, "--num-samples", 20, "--register", NAME,
               "--json", "out.json", "--tracking-uri", tracking_uri, "--quiet", *extra)
    result = json.loads(open("out.json").read())
    chosen = next(c for c in result["checkpoints"] if c["epoch"] == result["best_epoch"])
    return proc.stdout, chosen


def aliases(client) -> dict[str, str]:
    return dict(client.get_registered_model(NAME).aliases)


def test_aliases_follow_the_best_choice_per_space_and_versions_are_never_doubled(cli, tracking_uri, two_runs):
    (run_a, run_b), network = two_runs
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)

    out_a, chosen_a = evaluate(cli, tracking_uri, run_a, "random")
    assert f"registered: models:/{NAME}@best " in out_a
    version_a = client.get_model_version_by_alias(NAME, "best").version
    assert aliases(client) == {"best": version_a, "best-random": version_a}

    out_b, chosen_b = evaluate(cli, tracking_uri, run_b, "random")
    better, worse = sorted([(chosen_a["fid"], run_a), (chosen_b["fid"], run_b)])
    holder_version = client.get_model_version_by_alias(NAME, "best")
    assert holder_version.tags["run_id"] == better[1]
    assert aliases(client)["best-random"] == holder_version.version
    if better[1] == run_a:  # B's choice was worse: the output says why the aliases stayed
        assert "kept: @best stays on version" in out_b and "is lower than this choice's" in out_b
    else:
        assert f"registered: models:/{NAME}@best " in out_b

    # Another feature space: its own alias; @best follows the space it was set in and stays.
    out_space, chosen_space = evaluate(cli, tracking_uri, run_a, f"export:{network}")
    # The space may choose another of run A's checkpoints (20 samples, near ties): its alias holds that one.
    space_version = client.get_model_version_by_alias(NAME, alias_for_space("export-net"))
    assert (space_version.tags["run_id"], space_version.tags["epoch"]) == (run_a, str(chosen_space["epoch"]))
    assert (space_version.version == version_a) == (chosen_space["epoch"] == chosen_a["epoch"])
    assert aliases(client)["best"] == holder_version.version
    assert "kept: @best stays on version" in out_space and "follows the random feature space" in out_space

    # Registering the same checkpoint again reuses its version.
    count = len(client.search_model_versions(f"name = '{NAME}'"))
    evaluate(cli, tracking_uri, run_a, "random")
    chosen = {(run_a, chosen_a["epoch"]), (run_b, chosen_b["epoch"]), (run_a, chosen_space["epoch"])}
    assert len(client.search_model_versions(f"name = '{NAME}'")) == count == len(chosen)
    tags = client.get_model_version(NAME, version_a).tags
    (random_20,) = [e for e in json.loads(tags["facegan.scores"]) if e["space"] == "random"]
    assert random_20["fid"] == pytest.approx(chosen_a["fid"], rel=1e-9) and random_20["num_samples"] == 20
    assert tags["fid.random"].startswith(f"{chosen_a['fid']:.6g} (20 samples")
    assert tags["run_id"] == run_a and tags["epoch"] == str(chosen_a["epoch"])

    # Another sample count is not comparable either; --promote overrules the rule.
    out_count, _ = evaluate(cli, tracking_uri, run_b if better[1] == run_a else run_a, "random", "--num-samples", 30)
    assert "at 20 samples per checkpoint" in out_count
    loser = worse[1]
    out_promoted, _ = evaluate(cli, tracking_uri, loser, "random", "--promote")
    loser_epoch = str((chosen_a if loser == run_a else chosen_b)["epoch"])
    promoted = next(v.version for v in client.search_model_versions(f"name = '{NAME}'")
                    if (v.tags["run_id"], v.tags["epoch"]) == (loser, loser_epoch))
    assert aliases(client)["best"] == aliases(client)["best-random"] == promoted
    assert f"registered: models:/{NAME}@best " in out_promoted
    # ... against the better version scored before it; a better choice offered again moves them back.
    evaluate(cli, tracking_uri, better[1], "random")
    assert aliases(client)["best"] == holder_version.version


def score(version, fid, *, data="d", num_samples=20, scored_at=1):
    return VersionScore(version, "run", "1", fid, data, num_samples, scored_at)


def test_an_alias_holds_the_lowest_fid_of_its_class_since_it_was_set_by_hand():
    comparison = {"space": "random", "data": "d", "num_samples": 20, "since": 0}
    scores = [score(1, 30.0), score(2, 20.0), score(3, 10.0, data="other"), score(4, 5.0, num_samples=40),
              score(5, 20.0)]
    assert holder(comparison, scores).version == 2  # version 3 and 4 are other classes; a tie goes to the older
    assert holder({**comparison, "since": 5}, [score(1, 10.0, scored_at=4), score(6, 25.0, scored_at=5)]).version == 6
    assert holder(comparison, []) is None
    assert alias_for_space("export-enc.v2") == "best-export-enc_v2"
