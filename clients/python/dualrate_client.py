#!/usr/bin/env python3
"""Python client for `vla serve` (dualrate), wire-compatible with openpi's websocket client.

The protocol is openpi's (openpi-client: websocket_client_policy.py, msgpack_numpy.py): the server
sends a msgpack metadata map on connect; each request is one binary msgpack map whose numpy arrays
are packed as {b"__ndarray__": True, b"data": bytes, b"dtype": str, b"shape": tuple}; the reply is
one msgpack map. dualrate adds the force/torque stream: "force" float32 [N, 6] and "force_t"
float64 [N] (seconds on the robot's clock) with the samples since the previous request.

Debian packages only: python3-websockets (asyncio API), python3-msgpack, python3-numpy.

    client = PolicyClient("localhost", 8000)
    print(client.metadata)                     # views, image size, horizon, units, rates
    reply = client.infer({"images": {"top": rgb}, "prompt": "insert the needle into the red port",
                          "state": np.zeros(3, np.float32), "force": f, "force_t": t})
    reply["actions"]                           # float32 [8, 3], m per 80 Hz step

Streaming (dualrate's addition): `client.start_stream(obs, hz)` asks the server to push a reply
every 1/hz s on its own clock; `client.observe(obs)` then sends observations (frames, force,
state) without waiting, `client.recv()` returns the next pushed reply (`reply["stream_seq"]`
counts them) and `client.stop_stream(obs)` returns to request / reply.

Round-trip latency is measured here (`reply["client_ms"]`), per phase on the server
(`reply["server_timing"]`); no arithmetic mixes the two hosts' clocks.
"""
import argparse
import asyncio
import time
import urllib.request

import msgpack
import numpy as np
import websockets


def pack_array(obj):
    """openpi msgpack_numpy.pack_array: numpy arrays as maps of bytes, dtype and shape."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in ("V", "O", "c"):
            raise ValueError(f"unsupported dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def unpack_array(obj):
    """openpi msgpack_numpy.unpack_array (keys may be str or bytes)."""
    key = b"__ndarray__" if b"__ndarray__" in obj else "__ndarray__"
    if key in obj:
        g = (lambda k: obj[k.encode()]) if isinstance(key, bytes) else (lambda k: obj[k])
        return np.ndarray(buffer=g("data"), dtype=np.dtype(g("dtype")), shape=g("shape"))
    return obj


def packb(obj):
    return msgpack.packb(obj, default=pack_array, use_bin_type=True)


def unpackb(data):
    return msgpack.unpackb(data, object_hook=unpack_array, raw=False)


class PolicyClient:
    """Synchronous client (a private asyncio loop around python3-websockets 10)."""

    def __init__(self, host="localhost", port=8000, api_key=None, max_size=64 << 20):
        self._http = f"http://{host}:{port}"
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        headers = {"x-api-key": api_key} if api_key else None
        self._ws = self._loop.run_until_complete(websockets.connect(
            f"ws://{host}:{port}", extra_headers=headers, max_size=max_size, compression=None))
        self.metadata = unpackb(self._loop.run_until_complete(self._ws.recv()))

    def infer(self, obs):
        t0 = time.perf_counter()
        self._loop.run_until_complete(self._ws.send(packb(obs)))
        reply = self._loop.run_until_complete(self._ws.recv())
        if isinstance(reply, str):
            raise RuntimeError(f"server error: {reply}")
        out = unpackb(reply)
        if "error" in out:
            raise RuntimeError(f"server error: {out['error']}")
        out["client_ms"] = (time.perf_counter() - t0) * 1e3
        return out

    def start_stream(self, obs, hz=10.0):
        """Starts streaming; returns the reply to `obs` (stream_seq 0)."""
        return self.infer(dict(obs, stream=True, stream_hz=float(hz)))

    def observe(self, obs):
        """Sends an observation while streaming (no reply unless it is malformed)."""
        self._loop.run_until_complete(self._ws.send(packb(obs)))

    def recv(self):
        """The next message from the server (a pushed reply while streaming)."""
        out = unpackb(self._loop.run_until_complete(self._ws.recv()))
        if "error" in out:
            raise RuntimeError(f"server error: {out['error']}")
        return out

    def stop_stream(self, obs):
        """Stops streaming; returns the reply to `obs` (pushed replies still queued are skipped)."""
        self.observe(dict(obs, stream=False))
        while True:
            out = self.recv()
            if "stream_seq" not in out:
                return out

    def health(self):
        """GET /healthz: True when the server answers 200."""
        with urllib.request.urlopen(self._http + "/healthz", timeout=10) as r:
            return r.status == 200

    def metrics(self):
        """GET /metrics: the Prometheus text as {metric{labels}: value}."""
        with urllib.request.urlopen(self._http + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                         if line and not line.startswith("#"))}

    def send_raw(self, data):
        """Sends arbitrary bytes; returns the decoded reply (for tests of bad input)."""
        self._loop.run_until_complete(self._ws.send(data))
        return unpackb(self._loop.run_until_complete(self._ws.recv()))

    def close(self):
        self._loop.run_until_complete(self._ws.close())
        self._loop.close()


def main():
    ap = argparse.ArgumentParser(description="Drive `vla serve` with synthetic observations and "
                                 "print round-trip latency and what the server answered.")
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--hz", type=float, default=10.0, help="request rate (Hz)")
    ap.add_argument("--prompt", default="insert the needle into the red port")
    ap.add_argument("--stream", action="store_true",
                    help="streaming: the server pushes replies at --hz, the client only observes")
    args = ap.parse_args()
    c = PolicyClient(args.host, args.port, args.api_key)
    md = c.metadata
    print("metadata:", md)
    rng = np.random.default_rng(0)
    w, h = md["image_width"], md["image_height"]
    t_robot, period, per = 0.0, 1.0 / args.hz, int(round(md["force_hz"] / args.hz))
    lat, statuses = [], {}
    for i in range(args.requests):
        t = t_robot + (np.arange(1, per + 1) / md["force_hz"])
        t_robot = float(t[-1])
        obs = {"images": {v: rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for v in md["views"]},
               "prompt": args.prompt, "state": np.array([0.0, 0.0, 0.03], np.float32),
               "force": rng.normal(0, 0.01, (per, 6)).astype(np.float32), "force_t": t,
               "request_id": i, "reset": i == 0}  # a new episode: force clock restarts
        if not args.stream:
            r = c.infer(obs)
            assert r["request_id"] == i and r["actions"].shape == (md["horizon"], 3)
        elif i == 0:
            r = c.start_stream(obs, args.hz)
        else:  # an observation, then the next pushed reply (its age is the server's clock only)
            t0 = time.perf_counter()
            c.observe({k: v for k, v in obs.items() if k != "images"} if i % 10 else obs)
            r = c.recv()
            r["client_ms"] = (time.perf_counter() - t0) * 1e3
            assert r["actions"].shape == (md["horizon"], 3) and r["stream_seq"] >= 1
        lat.append(r["client_ms"])
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        if not args.stream:  # streaming: the server's pushes set the pace
            time.sleep(max(0.0, period - r["client_ms"] * 1e-3))
    if args.stream:
        c.stop_stream(obs)
    m = c.metrics()
    assert c.health() and m["dualrate_connections"] >= 1, "health / metrics"
    # Streaming: the client waits for each push, so the interval is the push period, not a
    # latency; frames go with every 10th message, so the features are up to 10 messages old.
    what = "pushed replies" if args.stream else "requests"
    timing = "interval between pushes" if args.stream else "round trip"
    print(f"{args.requests} {what}: status {statuses}; {timing} p50 {np.percentile(lat, 50):.2f} "
          f"ms, p99 {np.percentile(lat, 99):.2f} ms; last server timing {r['server_timing']}; "
          f"feature age {r['feature_age_s']:.3f} s (version {r['feature_version']}"
          f"{'; frames with every 10th message' if args.stream else ''}); health ok; "
          f"metrics: {int(m['dualrate_vlm_calls_total'])} VLM calls, "
          f"{int(m['dualrate_request_errors_total'])} errors")
    c.close()


if __name__ == "__main__":
    main()
