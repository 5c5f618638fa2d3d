"""The face editor: one page of sliders that redraws a face live, served over plain HTTP.

Besides one slider per latent dimension (the tutorial's editor), the page offers sliders with a
meaning: the generator's principal directions, found as GANSpace does (Härkönen et al. 2020).
Many random latents go through the generator's first two blocks; PCA of those early features
gives the main axes along which the generator's coarse layout varies, and a least-squares fit of
each PCA coordinate on the latents maps every axis back to one latent direction. Directions are
computed once per checkpoint and cached on disk.

Endpoints (all GET):

- ``/``: the page (HTML with inline CSS and JavaScript; nothing from the internet);
- ``/info``: JSON with the model's description, ``latent_dim``, ``image_size`` and the directions;
- ``/generate?z=<latent_dim comma-separated floats>``: the face as a PNG.

Bad input gets HTTP 400 (unknown paths 404) with a JSON body ``{"error": "..."}``, and the
server keeps serving.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import math
import os
import signal
import socket
import socketserver
import sys
import threading
import traceback
import zipfile
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from PIL import Image
from torch import nn

from facegan.common import atomic_write
from facegan.errors import FaceganError
from facegan.generate import LoadedModel, render

NUM_DIRECTIONS = 10
NUM_DIRECTION_SAMPLES = 2000
DIRECTIONS_METHOD = "pca-block2-lstsq-v1"  # part of the cache key: change it when the method changes
MAX_ABS_LATENT = 10.0
MAX_QUERY_BYTES = 16 * 1024  # 128 values at full precision take ~3 KB
_DISCARD_LIMIT = 1 << 20  # most bytes of a refused request read before closing its connection


# ----------------------------------------------------------------------------------------------
# Principal directions (GANSpace)


@dataclass(frozen=True)
class Directions:
    """Latent directions ordered by how much of the early features' variance they explain.

    Attributes:
        vectors: ``k x latent_dim`` float32, each row of unit length.
        variance_share: ``k`` shares of the feature layer's total variance along the matching
            principal component, descending; their sum is at most 1.
        layer: which features were analysed, for people (e.g. ``"block 2 (256x10x10)"``).
        num_samples: how many random latents the analysis used.
    """

    vectors: np.ndarray
    variance_share: np.ndarray
    layer: str
    num_samples: int


def early_features(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The generator's activations after its second block (conv, norm, ReLU): N x C x H x W.

    The first block's output is almost an affine function of ``z``; after the second, the
    features describe coarse layout (for 80 px: 256 maps of 10x10), which is where GANSpace looks.
    """
    relus = [i for i, layer in enumerate(generator.net) if isinstance(layer, nn.ReLU)]
    return generator.net[: relus[1] + 1](z.view(z.shape[0], -1, 1, 1))


def find_directions(generator: nn.Module, *, num_directions: int = NUM_DIRECTIONS,
                    num_samples: int = NUM_DIRECTION_SAMPLES, seed: int = 0,
                    latents: torch.Tensor | None = None) -> Directions:
    """Principal latent directions of ``generator`` (GANSpace).

    PCA of :func:`early_features` over ``num_samples`` standard-normal latents; each component's
    coordinates are then regressed on the latents by least squares, and the regression weights,
    scaled to unit length, are that component's latent direction: the direction in which the
    component grows fastest. (GANSpace regresses the other way round, latents on coordinates;
    for isotropic latents both give the same directions.) Deterministic for a given ``seed``;
    the global torch RNG is left as it was.

    Args:
        generator: a :class:`~facegan.models.Generator` in eval mode.
        num_directions: how many directions to return (at most ``latent_dim``).
        num_samples: how many standard-normal latents to analyse, drawn from ``seed``.
        seed: seed of those latents and of the randomised SVD.
        latents: analyse these latents (N x latent_dim) instead of drawing ``num_samples``.

    Example:
        >>> from facegan.models import Generator
        >>> d = find_directions(Generator(32, 16, 8).eval(), num_directions=3, num_samples=200)
        >>> d.vectors.shape, bool(np.allclose(np.linalg.norm(d.vectors, axis=1), 1))
        ((3, 16), True)
    """
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = torch.randn(num_samples, generator.latent_dim) if latents is None else latents.float()
        num_samples = z.shape[0]
        maps = [early_features(generator, chunk) for chunk in z.split(250)]
        layer = "block 2 ({}x{}x{})".format(*maps[0].shape[1:])
        features = torch.cat([m.flatten(1) for m in maps])
        del maps  # with the flattened copy alive too, peak memory would double
        features -= features.mean(0)
        k = min(num_directions, generator.latent_dim, num_samples - 1, features.shape[1])
        # Randomised SVD with power iterations: accurate for the top components and far faster
        # than a full SVD of a 2000 x 25600 matrix.
        _, singular, components = torch.svd_lowrank(features, q=min(k + 10, *features.shape), niter=4)
        coordinates = features @ components[:, :k]
        weights = torch.linalg.lstsq(z - z.mean(0), coordinates).solution  # latent_dim x k
        vectors = (weights / weights.norm(dim=0)).T
        total_variance = float(torch.linalg.vector_norm(features)) ** 2
        share = singular[:k].double().square() / total_variance
    return Directions(vectors.numpy().astype(np.float32), share.numpy(), layer, num_samples)


def directions_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/facegan/directions`` (default ``~/.cache/facegan/directions``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facegan" / "directions"


def cached_directions(model: LoadedModel, *, num_samples: int = NUM_DIRECTION_SAMPLES, cache_dir: Path | None = None,
                      log=None) -> Directions:
    """:func:`find_directions` for ``model``, cached under the checkpoint's sha256.

    An unreadable cache entry is recomputed; a cache that cannot be written only costs the
    computation next time (``log`` gets a warning).
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    cache_dir = cache_dir or directions_cache_dir()
    path = cache_dir / f"{model.digest[:32]}-{DIRECTIONS_METHOD}-k{NUM_DIRECTIONS}-n{num_samples}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            directions = Directions(data["vectors"], data["variance_share"], str(data["layer"]), int(data["num_samples"]))
        if directions.vectors.shape[1] == model.generator.latent_dim:
            return directions
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # missing or damaged: compute again
    log(f"finding principal directions over {num_samples} random faces (once per model)...")
    directions = find_directions(model.generator, num_samples=num_samples)
    try:
        atomic_write(path, lambda f: np.savez(f, vectors=directions.vectors, variance_share=directions.variance_share,
                                              layer=directions.layer, num_samples=directions.num_samples))
    except OSError as exc:
        log(f"warning: cannot cache directions in {cache_dir} ({exc.strerror}); they will be computed again next time")
    return directions


# ----------------------------------------------------------------------------------------------
# The editor without HTTP


class BadRequest(ValueError):
    """A request the editor refuses; the message is shown to the client."""


class FaceEditor:
    """What the endpoints do: check latents, render them as PNG, describe the model.

    Renders one face at a time (a lock): the page sends at most one request at a time anyway,
    and parallel forward passes would only compete for the same cores.
    """

    def __init__(self, generator: nn.Module, directions: Directions, description: str):
        self.generator = generator.eval()
        self.directions = directions
        self.description = description
        self._lock = threading.Lock()

    def parse_latent(self, query: str) -> np.ndarray:
        """The latent in a ``z=v1,v2,...`` query string; :class:`BadRequest` explains any problem."""
        if len(query) > MAX_QUERY_BYTES:
            raise BadRequest(f"query too long ({len(query)} bytes; at most {MAX_QUERY_BYTES})")
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=True, max_num_fields=8)
        except ValueError as exc:
            raise BadRequest(f"malformed query: {exc}") from None
        unknown = sorted(set(params) - {"z"})
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r}; expected only z")
        if len(params.get("z", [])) != 1:
            raise BadRequest("expected one parameter z=<comma-separated numbers>")
        latent_dim = self.generator.latent_dim
        takes = f"this model takes {latent_dim} comma-separated numbers"
        if not params["z"][0].strip():
            raise BadRequest(f"z is empty; {takes}")
        texts = params["z"][0].split(",")
        # Every value is read before the count is checked, so that `z=abc` is named as no number
        # rather than reported as too few values.
        values = np.empty(len(texts), dtype=np.float32)
        for i, text in enumerate(texts):
            try:
                value = float(text)
            except ValueError:
                raise BadRequest(f"z[{i}] is not a number: {text[:20]!r}; {takes}") from None
            if not math.isfinite(value):
                raise BadRequest(f"z[{i}] is {text.strip()}; values must be finite")
            if abs(value) > MAX_ABS_LATENT:
                raise BadRequest(f"z[{i}] = {value:g} is beyond ±{MAX_ABS_LATENT:g}")
            values[i] = value
        if len(texts) != latent_dim:
            raise BadRequest(f"z has {len(texts)} value{'s' if len(texts) != 1 else ''}; {takes}")
        return values

    def render_png(self, z: np.ndarray) -> bytes:
        """The face for one latent vector as PNG bytes (image_size x image_size)."""
        with self._lock:
            image = render(self.generator, torch.from_numpy(z).view(1, -1))[0]
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # speed over bytes
        return buffer.getvalue()

    def info(self) -> dict:
        """What the page needs: sizes, the model's description and the directions."""
        return {
            "model": self.description,
            "latent_dim": self.generator.latent_dim,
            "image_size": self.generator.image_size,
            "max_abs_latent": MAX_ABS_LATENT,
            "directions_layer": self.directions.layer,
            "directions_samples": self.directions.num_samples,
            "directions": [
                {"variance_share": round(float(share), 6), "vector": [round(float(v), 6) for v in vector]}
                for vector, share in zip(self.directions.vectors, self.directions.variance_share)
            ],
        }


# ----------------------------------------------------------------------------------------------
# HTTP


def page_html() -> bytes:
    """The editor page (``facegan/static/editor.html``)."""
    return resources.files("facegan").joinpath("static/editor.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: dragging sends many small requests
    # Headers and body leave in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK of the first, adding ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "facegan"
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    server: "EditorServer"

    def do_GET(self):
        url = urlsplit(self.path)
        routes = {"/": self._page, "/info": self._info, "/generate": self._generate}
        try:
            if self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True
                self._discard_body(self.headers["Content-Length"])
                raise BadRequest("GET requests take no body")
            if url.path not in routes:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {url.path[:200]}"})
                return
            routes[url.path](url.query)
        except BadRequest as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except ConnectionError:  # the client left (a closed tab): nobody to answer
            self.close_connection = True
        except Exception as exc:  # a bug: report it, and keep serving
            traceback.print_exc()
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"})

    def _page(self, query):
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page_html())

    def _info(self, query):
        self._send_json(HTTPStatus.OK, self.server.editor.info())

    def _generate(self, query):
        editor = self.server.editor
        self._send(HTTPStatus.OK, "image/png", editor.render_png(editor.parse_latent(query)))

    def send_error(self, code, message=None, explain=None):
        # The stdlib answers malformed requests itself (a bad request line, an unsupported
        # method, a request line over 64 KB) with an HTML page; answer JSON like everywhere else.
        # Over-long request lines are bad input like any other: 400, as for long queries.
        if code == HTTPStatus.REQUEST_URI_TOO_LONG:
            code, message = HTTPStatus.BAD_REQUEST, "request line too long (over 64 KB)"
            # The rest of the line and the headers are still unread: see _discard_body.
            self.rfile.readline(_DISCARD_LIMIT)
            for _ in range(100):
                if self.rfile.readline(_DISCARD_LIMIT) in (b"\r\n", b"\n", b""):
                    break
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})

    def _discard_body(self, length_header: str):
        # Closing a connection that still holds unread data makes the kernel reset it, and the
        # client may then lose our answer; read what a refused request sent (up to 1 MB) first.
        try:
            length = int(length_header)
        except ValueError:
            return
        if 0 < length <= _DISCARD_LIMIT:
            self.rfile.read(length)

    def _send_json(self, code, payload):
        self._send(code, "application/json", json.dumps(payload).encode())

    def _send(self, code, content_type, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        # Dragging a slider sends dozens of requests a second: log only the failures.
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)


class EditorServer(ThreadingHTTPServer):
    """The editor's HTTP server; ``port=0`` picks a free port (see :attr:`url`).

    ``editor`` may be ``None`` at first and set before :meth:`serve_forever`: binding first
    reports a busy port before the slow work of preparing the editor.
    """

    daemon_threads = True  # open keep-alive connections must not keep the process alive

    def __init__(self, editor: FaceEditor | None, host: str = "127.0.0.1", port: int = 8666):
        self.editor = editor
        try:
            self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            super().__init__((host, port), _Handler)
        except socket.gaierror as exc:
            raise FaceganError(f"cannot listen on host {host!r}: {exc.strerror}") from None
        except OSError as exc:
            raise FaceganError(f"cannot listen on {host}:{port}: {exc.strerror}"
                               + ("; choose another --port" if exc.errno == errno.EADDRINUSE else "")) from None

    def server_bind(self):
        # HTTPServer.server_bind looks up the host's fully qualified name, which can hang for
        # many seconds on a machine without working DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server_address[1]}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; host names other than localhost count as
    reachable from the network (they may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_editor(model: LoadedModel, host: str, port: int, *, log=None) -> None:
    """Serve the editor for ``model`` until Ctrl-C (the body of ``facegan serve``)."""
    log = log or (lambda message: print(message, file=sys.stderr))
    # One face is a few milliseconds of small convolutions: more threads add synchronisation,
    # and on a shared machine wait for each other. Set before any parallel work: changing the
    # pool size after it has run has aborted the process at exit ("terminate called").
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    server = EditorServer(None, host, port)
    server.editor = FaceEditor(model.generator, cached_directions(model, log=log), model.description)
    if not is_loopback(host):
        log(f"warning: listening on {host}: the editor is reachable from the network, without any login")
    stopping = threading.Event()

    def request_stop(signum, frame):
        # Ctrl-C asks serve_forever to return instead of raising wherever the main thread happens
        # to be (inside a print, inside socketserver's bookkeeping); a second one stops at once.
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    try:
        previous = signal.signal(signal.SIGINT, request_stop)
    except ValueError:  # not the main thread: leave Ctrl-C to whoever owns it
        previous = None
    try:
        print(f"facegan editor on {server.url} — Ctrl-C to stop", flush=True)
        print(f"model: {model.description}", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        server.server_close()
    log("stopped")
