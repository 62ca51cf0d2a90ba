"""Secure inference across real party processes (SPU over brpc), one process per party.

Party 0 is the client: it holds the images and receives the logits. Party 1 is the server: it
holds the model weights. (A third party, for ABY3, holds nothing and helps compute.) Every
party runs the same command with the same nodes file::

    protocol: semi2k            # semi2k | cheetah (2 parties) | aby3 (3 parties)
    parties: ["10.0.0.1:9920", "10.0.0.2:9921"]   # host:port of party 0, 1[, 2]
    run: runs/senet-half        # the model's run folder (architecture and masks are public)
    images: 4                   # the client's first N test images
    relu_mode: gather           # gather | naive
    timeout_s: 60               # a party that does not answer within this ends the run with an error
    out: runs/senet-half/secure/distributed.json   # where the client writes the logits

    trustlab pi secure-serve --config nodes.yaml --party 1    # on the server machine
    trustlab pi secure-serve --config nodes.yaml --party 0    # on the client machine

Each party secret-shares its own inputs with SPU's ``Io`` and sends every other party its
share over the SPU link; all run the compiled program on their shares; the output shares go
to the client, which reconstructs the logits. Shares travel as length-prefixed bytes (never
pickled). The run folder must be present on every party: the server's copy needs the
weights, the others only its architecture and masks (their copy's weights are not used).
"""

from __future__ import annotations

import math
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustlab.errors import ConfigError, TrustlabError
from trustlab.files import read_yaml

CLIENT, SERVER = 0, 1


@dataclass(frozen=True)
class NodesConfig:
    protocol: str
    parties: tuple[str, ...]
    run: str
    images: int = 4
    relu_mode: str = "gather"
    timeout_s: float = 60.0
    out: str | None = None

    def validate(self) -> None:
        from trustlab.pi.secure import PROTOCOLS, RELU_MODES

        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, not '{self.protocol}'")
        need = PROTOCOLS[self.protocol]
        if not isinstance(self.parties, (list, tuple)) or len(self.parties) != need:
            raise ConfigError(f"{self.protocol} needs {need} parties (host:port each), the file lists "
                              f"{len(self.parties) if isinstance(self.parties, (list, tuple)) else 'none'}")
        for i, addr in enumerate(self.parties):
            host, _, port = str(addr).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"parties[{i}] = '{addr}' is not host:port")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ConfigError(f"images = {self.images!r}: give a whole number of test images, 1 or more")
        if (isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float))
                or not 0 < self.timeout_s < 86400):
            raise ConfigError(f"timeout_s = {self.timeout_s!r}: give seconds as a positive number")
        if self.relu_mode not in RELU_MODES:
            raise ConfigError(f"relu_mode = {self.relu_mode!r}: use {' or '.join(RELU_MODES)}")
        for key in ("run", "out"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key} = {value!r} is not a path")


def load_nodes(path: str | Path) -> NodesConfig:
    """The nodes file at ``path``, checked (every error names the file)."""
    path = Path(path)
    doc = read_yaml(path, "nodes file")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with protocol, parties and run")
    unknown = set(doc) - set(NodesConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("protocol", "parties", "run"):
        if key not in doc:
            raise ConfigError(f"{path}: '{key}' is required")
    cfg = NodesConfig(**doc)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return NodesConfig(**{**doc, "parties": tuple(str(p) for p in cfg.parties), "timeout_s": float(cfg.timeout_s)})


def _check_can_listen(addr: str, party: int) -> None:
    """Fail at once, naming the port, when this party cannot listen where the nodes file says."""
    host, _, port = addr.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as sock:
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError as e:
            raise ConfigError(f"party {party}: cannot listen on {addr} ({e.strerror or e}): another process holds the port, "
                              f"or {host} is not an address of this machine") from None


def _cause(e: Exception) -> str:
    """The informative line of an SPU/brpc exception (its text starts with an empty 'what:' line)."""
    for line in str(e).splitlines():
        line = line.strip()
        if line.lower().startswith("what:"):
            line = line[5:].strip()
        if line and not line.lower().startswith(("stacktrace", "#")):
            return line[:200]
    return type(e).__name__


def pack_share(share) -> bytes:
    parts = [share.meta, *share.share_chunks]
    return struct.pack("<I", len(parts)) + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def unpack_share(data: bytes):
    import spu.libspu as libspu

    (n,), pos, parts = struct.unpack_from("<I", data), 4, []
    for _ in range(n):
        (size,) = struct.unpack_from("<Q", data, pos)
        parts.append(data[pos + 8 : pos + 8 + size])
        pos += 8 + size
    share = libspu.Share()
    share.meta, share.share_chunks = parts[0], parts[1:]
    return share


def serve_party(config_path: str | Path, party: int) -> dict | None:
    """Run one party; the client returns (and writes) the logits, the others return None."""
    cfg = load_nodes(config_path)  # a bad nodes file is refused before SPU and JAX load
    world = len(cfg.parties)
    if not 0 <= party < world:
        raise ConfigError(f"--party must be 0..{world - 1} for {cfg.protocol}")

    import spu.api as spu_api
    import spu.libspu as libspu
    import spu.utils.frontend as spu_fe

    from trustlab.pi.load import load_pi_model
    from trustlab.pi.secure import export_jax, runtime_config
    model, shape, data_cfg = load_pi_model(cfg.run)
    exported = export_jax(model, shape, cfg.relu_mode)
    if party == CLIENT:
        x = data_cfg.load().x_test[: cfg.images].numpy().astype(np.float32)
    else:
        x = np.zeros((cfg.images, *shape), np.float32)  # only its shape is used
    weights = exported.weights if party == SERVER else [np.zeros_like(w) for w in exported.weights]
    inputs = [x, *weights]
    names = [f"in{i}" for i in range(len(inputs))]
    executable, _ = spu_fe.compile(spu_fe.Kind.JAX, exported.fn, inputs, {}, names,
                                   [libspu.Visibility.VIS_SECRET] * len(inputs), lambda outs: [f"out{i}" for i in range(len(outs))])
    rt_config = runtime_config(cfg.protocol)
    desc = libspu.link.Desc()
    for i, addr in enumerate(cfg.parties):
        desc.add_party(f"party{i}", addr)
    # A peer that never comes up must end the run after about timeout_s: one connection attempt
    # a second, and no inner retries (SPU's default retry_opts add 1 + 3 + 5 s to every attempt,
    # which made a missing party take about 10x the configured timeout).
    desc.recv_timeout_ms = int(cfg.timeout_s * 1000)
    desc.connect_retry_times = math.ceil(cfg.timeout_s) + 1
    desc.connect_retry_interval_ms = 1000
    retry = desc.retry_opts
    retry.max_retry = 0
    desc.retry_opts = retry
    _check_can_listen(cfg.parties[party], party)
    t0 = time.time()
    try:
        lctx = libspu.link.create_brpc(desc, party)
        io = spu_api.Io(world, rt_config)
        owners = [CLIENT] + [SERVER] * len(weights)
        mine = {}
        for name, value, owner in zip(names, inputs, owners):
            if owner == party:
                shares = io.make_shares(value, libspu.Visibility.VIS_SECRET)
                for other in range(world):
                    if other != party:
                        lctx.send(other, pack_share(shares[other]))
                mine[name] = shares[party]
            else:
                mine[name] = unpack_share(lctx.recv(owner))
        rt = spu_api.Runtime(lctx, rt_config)
        for name, share in mine.items():
            rt.set_var(name, share)
        rt.run(executable)
        out = rt.get_var(executable.output_names[0])
        if party != CLIENT:
            lctx.send(CLIENT, pack_share(out))
            lctx.stop_link()
            return None
        shares = [out if p == CLIENT else unpack_share(lctx.recv(p)) for p in range(world)]
        logits = io.reconstruct(shares)
        lctx.stop_link()
    except TrustlabError:
        raise
    except Exception as e:  # link failures surface as native exceptions
        raise TrustlabError(f"party {party}: secure run failed ({_cause(e)}); check that every party in {config_path} "
                            f"is running and reachable within {cfg.timeout_s:g} s") from None
    result = {"protocol": cfg.protocol, "parties": list(cfg.parties), "images": cfg.images,
              "seconds": time.time() - t0, "logits": logits.tolist(), "top1": logits.argmax(1).tolist()}
    if cfg.out:
        from trustlab.runs import atomic_write_json

        atomic_write_json(Path(cfg.out), result)
    return result
