import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from trustlab.pi.load import load_pi_model


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def party(cfg, rank):
    return subprocess.Popen([sys.executable, "-m", "trustlab", "pi", "secure-serve", "--config", str(cfg), "--party", str(rank)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "t"
    r = subprocess.run([sys.executable, "-m", "trustlab", "pi", "train", "--dataset", "synthetic", "--width", "0.0625",
                        "--epochs", "1", "--batch-size", "64", "--out", str(out), "--quiet", "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_two_party_processes_agree_with_plaintext(run, tmp_path):
    ports = free_ports(2)
    cfg = tmp_path / "nodes.yaml"
    cfg.write_text(f"protocol: semi2k\nparties: ['127.0.0.1:{ports[0]}', '127.0.0.1:{ports[1]}']\nrun: {run}\n"
                   f"images: 3\ntimeout_s: 60\nout: {tmp_path / 'client.json'}\n")
    server, client = party(cfg, 1), party(cfg, 0)
    out_c, err_c = client.communicate(timeout=300)
    out_s, err_s = server.communicate(timeout=60)
    assert client.returncode == 0, err_c[-1500:]
    assert server.returncode == 0, err_s[-1500:]
    result = json.loads((tmp_path / "client.json").read_text())
    model, _, data_cfg = load_pi_model(run)
    with torch.no_grad():
        plain = model(data_cfg.load().x_test[:3])
    assert result["top1"] == plain.argmax(1).tolist()
    assert (torch.tensor(result["logits"]) - plain).abs().max() < 1e-2


def test_a_missing_party_ends_in_an_error_not_a_hang(run, tmp_path):
    ports = free_ports(2)
    cfg = tmp_path / "nodes.yaml"
    cfg.write_text(f"protocol: semi2k\nparties: ['127.0.0.1:{ports[0]}', '127.0.0.1:{ports[1]}']\nrun: {run}\nimages: 1\ntimeout_s: 3\n")
    t = time.time()
    client = party(cfg, 0)
    _, err = client.communicate(timeout=120)
    assert client.returncode == 2 and "party 0" in err and "reachable" in err
    assert "connect" in err.splitlines()[-1]  # the cause, not an empty "what:"
    # start-up and compilation take ~7 s here; SPU's default inner retries made it ~35 s
    assert time.time() - t < 30


@pytest.mark.parametrize("text,needle", [
    ("protocol: semi2k\nparties: ['127.0.0.1:1']\nrun: x\n", "needs 2 parties"),
    ("protocol: semi2k\nparties: ['127.0.0.1:1', 'nohost']\nrun: x\n", "parties[1] = 'nohost' is not host:port"),
    ("protocol: spdz\nparties: []\nrun: x\n", "protocol must be one of"),
])
def test_bad_nodes_files(tmp_path, cli, text, needle):
    cfg = tmp_path / "n.yaml"
    cfg.write_text(text)
    r = cli("pi", "secure-serve", "--config", str(cfg), "--party", "0")
    assert r.returncode == 2 and needle in r.stderr
