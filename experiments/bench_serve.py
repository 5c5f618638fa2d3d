"""Benchmark the face editor's generation endpoint over HTTP on the CPU.

Run: ``python -m experiments.bench_serve [--requests 300] [--warmup 20] [--render-repeats 100]``

Starts the real ``facegan serve`` in a subprocess on the tutorial's 80x80 ``Generator()`` with random
(DCGAN-initialised) weights: latency does not depend on what the weights learned. Then sends
``--requests`` sequential ``GET /generate?z=...`` requests over one keep-alive connection, as the
page does, each with a fresh random latent written with 4 decimals, as the page writes them.
Targets on a 2-core CPU: p50 <= 30 ms, p99 <= 100 ms.

For the breakdown it also times the server's own work without HTTP (forward pass and PNG
encoding, ``FaceEditor.render_png``) in this process, with 1 torch thread (what the server uses)
and with 2. These machines are shared: the 1-minute load average is printed beside the figures.

Prints a table, then, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facegan.checkpoint import save_checkpoint
from facegan.models import Generator, NetworkConfig
from facegan.serve import FaceEditor, find_directions

from experiments import provenance


def percentiles(milliseconds: list[float]) -> dict[str, float]:
    values = np.asarray(milliseconds)
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max()),
            "mean_ms": float(values.mean())}


def start_server(checkpoint: Path, cache: Path) -> tuple[subprocess.Popen, int]:
    """``facegan serve`` on a free port; returns the process and the port once it listens."""
    facegan = Path(sys.executable).with_name("facegan")
    proc = subprocess.Popen([str(facegan), "serve", "--model", str(checkpoint), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if "facegan editor on http://" not in line:
        proc.kill()
        raise SystemExit(f"facegan serve did not start: {line!r}")
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def query(z: np.ndarray) -> str:
    return "/generate?z=" + ",".join(f"{v:.4f}" for v in z)


def time_http(port: int, latents: np.ndarray, warmup: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    milliseconds = []
    for i, z in enumerate(latents):
        start = time.perf_counter()
        conn.request("GET", query(z))
        response = conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        if response.status != 200 or body[:4] != b"\x89PNG":
            raise SystemExit(f"request {i} failed: {response.status} {body[:200]!r}")
        if i >= warmup:
            milliseconds.append(elapsed)
    conn.close()
    return milliseconds


def time_render(editor: FaceEditor, latents: np.ndarray, threads: int, warmup: int) -> list[float]:
    torch.set_num_threads(threads)
    milliseconds = []
    for i, z in enumerate(latents):
        start = time.perf_counter()
        editor.render_png(z)
        if i >= warmup:
            milliseconds.append((time.perf_counter() - start) * 1000)
    return milliseconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="Requests sent first and not counted.")
    parser.add_argument("--render-repeats", type=int, default=100, help="Timed renders without HTTP, per thread count.")
    args = parser.parse_args()
    provenance.announce(__spec__.name)

    torch.manual_seed(0)
    generator = Generator().eval()
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((args.warmup + args.requests, generator.latent_dim)).astype(np.float32)
    results = {"device": "cpu", "cpu_count": os.cpu_count(), "model": "Generator() 80x80, random weights",
               "requests": args.requests, "warmup_requests": args.warmup, "render_repeats": args.render_repeats}

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint({"kind": "generator", "epoch": 0, "network": NetworkConfig().to_dict(),
                                      "config": {}, "dataset": {}, "generator": generator.state_dict()},
                                     Path(tmp) / "generator.pt")
        proc, port = start_server(checkpoint, Path(tmp) / "cache")
        try:
            results["load_avg_1m_before"] = os.getloadavg()[0]
            results["http"] = percentiles(time_http(port, latents, args.warmup))
            results["load_avg_1m_after"] = os.getloadavg()[0]
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    # The directions play no part in rendering; a few samples make a valid editor quickly.
    editor = FaceEditor(generator, find_directions(generator, num_samples=50), "bench")
    for threads in (1, 2):
        timed = latents[: args.warmup + args.render_repeats]
        results[f"render_png_threads_{threads}"] = percentiles(time_render(editor, timed, threads, args.warmup))

    rows = [("HTTP GET /generate (server: 1 torch thread)", results["http"]),
            ("render_png only, 1 torch thread", results["render_png_threads_1"]),
            ("render_png only, 2 torch threads", results["render_png_threads_2"])]
    print(f"{args.requests} sequential requests, 80x80 generator, random weights; "
          f"load average {results['load_avg_1m_before']:.1f} -> {results['load_avg_1m_after']:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'':46} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, figures in rows:
        print(f"{name:46} {figures['p50_ms']:8.1f} {figures['p90_ms']:8.1f} {figures['p99_ms']:8.1f} "
              f"{figures['max_ms']:8.1f}")
    print("target: HTTP p50 <= 30 ms, p99 <= 100 ms")
    results["p50_ms"], results["p99_ms"] = results["http"]["p50_ms"], results["http"]["p99_ms"]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
