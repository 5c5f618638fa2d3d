"""The face editor's server: endpoints, bad input, principal directions, cache, and the CLI."""

import http.client
import io
import json
import os
import signal
import subprocess
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import FACEGAN
from facegan.cli import main
from facegan.errors import FaceganError
from facegan.generate import load_model
from facegan.serve import (EditorServer, FaceEditor, cached_directions, early_features, find_directions,
                           is_loopback)
from test_generate import save_tiny_checkpoint

LATENT_DIM = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(str(save_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt")))


@pytest.fixture(scope="module")
def server(model):
    """The editor on a free port, served from a thread of this process."""
    editor = FaceEditor(model.generator, find_directions(model.generator, num_samples=500), model.description)
    srv = EditorServer(editor, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path, *, body=None):
    """(status, content type, body bytes) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request("GET", path, body=body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def latent_query(values):
    return "/generate?z=" + ",".join(str(v) for v in values)


def test_generate_returns_a_png_of_the_model_size(server):
    status, content_type, body = get(server, latent_query(np.linspace(-2, 2, LATENT_DIM)))
    assert status == 200 and content_type == "image/png"
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    assert np.asarray(image).std() > 0  # not a blank image
    # The same latent gives the same face; values of exactly ±10 are allowed.
    assert get(server, latent_query(np.linspace(-2, 2, LATENT_DIM)))[2] == body
    assert get(server, latent_query([10] * (LATENT_DIM - 1) + [-10]))[0] == 200


@pytest.mark.parametrize(
    "path, message",
    [
        (latent_query([0] * (LATENT_DIM - 1)), "z has 15 values; this model takes 16 comma-separated numbers"),
        (latent_query([0] * (LATENT_DIM + 1)), "z has 17 values"),
        (latent_query(["nan"] + [0] * (LATENT_DIM - 1)), "z[0] is nan; values must be finite"),
        (latent_query([0, "inf"] + [0] * (LATENT_DIM - 2)), "z[1] is inf"),
        (latent_query([0, "-inf"] + [0] * (LATENT_DIM - 2)), "z[1] is -inf"),
        (latent_query([0] * (LATENT_DIM - 1) + [10.5]), "z[15] = 10.5 is beyond ±10"),
        (latent_query([0] * (LATENT_DIM - 1) + ["-1e300"]), "z[15] = -1e+300 is beyond ±10"),
        (latent_query(["abc"] + [0] * (LATENT_DIM - 1)), "z[0] is not a number: 'abc'"),
        # One value that is no number is named as such, not counted as a latent one value long.
        ("/generate?z=abc", "z[0] is not a number: 'abc'; this model takes 16 comma-separated numbers"),
        ("/generate?z=0.5,x", "z[1] is not a number: 'x'"),
        ("/generate?z=0.5", "z has 1 value; this model takes 16 comma-separated numbers"),
        (latent_query(["%ZZ"] + [0] * (LATENT_DIM - 1)), "z[0] is not a number"),
        ("/generate?z=", "z is empty; this model takes 16"),
        ("/generate?z=%20", "z is empty"),
        ("/generate", "expected one parameter z"),
        ("/generate?z=1&z=2", "expected one parameter z"),
        (latent_query([0] * LATENT_DIM) + "&size=1024", "unknown parameter 'size'"),
        ("/generate?z", "malformed query"),
        ("/generate?z=" + "1," * 10_000, "query too long"),
        ("/generate?z=" + "1," * 40_000, "request line too long"),
    ],
)
def test_bad_input_is_a_400_with_a_json_message(server, path, message):
    status, content_type, body = get(server, path)
    assert (status, content_type) == (400, "application/json")
    assert message in json.loads(body)["error"]


def test_other_errors_are_json_and_the_server_keeps_serving(server):
    status, content_type, body = get(server, "/nope")
    assert (status, content_type) == (404, "application/json") and "no such path" in json.loads(body)["error"]
    status, _, body = get(server, latent_query([0] * LATENT_DIM), body=b"x" * 100_000)
    assert status == 400 and json.loads(body)["error"] == "GET requests take no body"
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("POST", "/generate", body=b"{}")
    response = conn.getresponse()
    assert response.status == 501 and "error" in json.loads(response.read())
    conn.close()
    assert get(server, latent_query([0] * LATENT_DIM))[0] == 200


def test_keep_alive_connections_serve_many_requests(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    for value in (0.0, 0.5, 1.0):
        conn.request("GET", latent_query([value] * LATENT_DIM))
        response = conn.getresponse()
        assert response.status == 200 and response.read()[:4] == b"\x89PNG"
    conn.request("GET", "/generate?z=oops")  # a 400 keeps the connection usable too
    assert conn.getresponse().read()
    conn.request("GET", "/info")
    assert conn.getresponse().status == 200
    conn.close()


def test_info_and_page(server):
    status, content_type, body = get(server, "/info")
    info = json.loads(body)
    assert status == 200 and content_type == "application/json"
    assert info["latent_dim"] == LATENT_DIM and info["image_size"] == 32 and info["max_abs_latent"] == 10
    assert "tiny.pt (epoch 1, 32x32 px, 16-d latent)" in info["model"]
    assert len(info["directions"]) == 10 and info["directions_layer"] == "block 2 (16x8x8)"
    vectors = np.array([d["vector"] for d in info["directions"]])
    assert vectors.shape == (10, LATENT_DIM) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)

    status, content_type, page = get(server, "/")
    assert status == 200 and content_type.startswith("text/html")
    text = page.decode()
    assert 'id="random"' in text and 'id="interp"' in text and 'id="trunc"' in text and 'id="download"' in text
    assert "http://" not in text and "https://" not in text  # nothing loaded from the internet


def test_directions_match_an_exact_pca_and_move_their_component_most(model):
    generator = model.generator
    # 500 samples keep numpy's exact SVD quick (its BLAS threads crawl on a busy machine).
    latents = torch.randn(500, LATENT_DIM, generator=torch.Generator().manual_seed(1))
    directions = find_directions(generator, num_directions=5, latents=latents)
    vectors, shares = directions.vectors, directions.variance_share
    assert vectors.shape == (5, LATENT_DIM) and directions.num_samples == 500
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.all(np.diff(shares) <= 0) and 0 < shares.sum() <= 1

    # Reference: exact PCA with numpy in float64, and the least-squares regression of each
    # component's coordinates on the latents.
    with torch.inference_mode():
        features = early_features(generator, latents).flatten(1).double().numpy()
    features -= features.mean(0)
    _, singular, components = np.linalg.svd(features, full_matrices=False)
    # The randomised SVD agrees with the exact one to well within 1% on the top components.
    np.testing.assert_allclose(shares, singular[:5] ** 2 / np.square(features).sum(), rtol=1e-2)
    z = latents.double().numpy()
    reference, *_ = np.linalg.lstsq(z - z.mean(0), features @ components[:5].T, rcond=None)
    reference /= np.linalg.norm(reference, axis=0)
    # The same directions up to sign (a principal component's sign is arbitrary); the last ones
    # asked for are the randomised SVD's least accurate, so the top three are held tightest.
    cosines = np.abs(np.sum(reference.T * vectors, axis=1))
    assert np.all(cosines[:3] > 0.999) and np.all(cosines > 0.95), cosines

    # A step along direction 1 from fresh faces moves the features along component 1 more than
    # along any other of the top components.
    base = torch.randn(200, LATENT_DIM, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        step = early_features(generator, base + torch.from_numpy(vectors[0])) - early_features(generator, base)
    movement = np.abs(step.flatten(1).double().numpy() @ components[:5].T).mean(0)
    assert movement.argmax() == 0


def test_directions_are_cached_per_checkpoint(model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    messages = []
    first = cached_directions(model, num_samples=300, log=messages.append)
    (cached,) = (tmp_path / "cache" / "facegan" / "directions").glob(f"{model.digest[:32]}-*.npz")
    assert len(messages) == 1 and "finding principal directions" in messages[0]

    def fail(*args, **kwargs):
        raise AssertionError("directions computed again despite the cache")

    monkeypatch.setattr("facegan.serve.find_directions", fail)
    again = cached_directions(model, num_samples=300, log=messages.append)
    assert np.array_equal(first.vectors, again.vectors) and again.layer == first.layer
    assert len(messages) == 1

    monkeypatch.undo()
    cached.write_bytes(b"damaged")  # a damaged entry is computed again and replaced
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert np.array_equal(cached_directions(model, num_samples=300, log=messages.append).vectors, first.vectors)
    assert np.load(cached)["vectors"].shape == (10, LATENT_DIM)


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("myhost")


def test_serve_cli_warns_prints_the_url_and_stops_on_ctrl_c(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt")
    proc = subprocess.Popen(
        [FACEGAN, "serve", "--model", str(checkpoint), "--host", "0.0.0.0", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("facegan editor on http://0.0.0.0:") and line.rstrip().endswith("— Ctrl-C to stop"), line
        port = int(line.split("http://0.0.0.0:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/info")
        assert json.loads(conn.getresponse().read())["latent_dim"] == LATENT_DIM
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "reachable from the network" in err and "Traceback" not in err
    assert list((tmp_path / "cache" / "facegan" / "directions").glob("*.npz"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "missing.pt"], "Error: checkpoint not found: missing.pt"),
        (["--model", "{damaged}"], "not a readable facegan checkpoint"),
        # 192.0.2.1 is reserved for documentation: no machine has it, so binding fails at once.
        (["--model", "{checkpoint}", "--host", "192.0.2.1", "--port", "0"], "cannot listen on 192.0.2.1:0"),
    ],
)
def test_serve_start_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    args = [a.format(checkpoint=checkpoint, damaged=damaged) for a in args]
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output


def test_a_busy_port_is_a_clear_error(server, model):
    with pytest.raises(FaceganError, match=r"cannot listen on 127.0.0.1:\d+: .*choose another --port"):
        EditorServer(FaceEditor(model.generator, server.editor.directions, ""), "127.0.0.1", server.server_address[1])
