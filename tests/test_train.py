import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trustlab.runs import RunDir, load_checkpoint_file
from trustlab.train import lr_at, random_shift
from trustlab.train_config import TrainConfig

HERE = Path(__file__).parent


def test_cosine_schedule_and_warmup():
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    assert lr_at(cfg, 0, 110) == pytest.approx(0.1)
    assert lr_at(cfg, 10, 110) == pytest.approx(1.0)
    assert lr_at(cfg, 110, 110) == pytest.approx(0.0, abs=1e-12)


def test_random_shift_is_seeded_by_step_and_keeps_content():
    x = torch.rand(8, 3, 12, 12)
    a, b = random_shift(x, 0, 5), random_shift(x, 0, 5)
    assert torch.equal(a, b) and not torch.equal(a, random_shift(x, 0, 6))
    assert a.shape == x.shape
    # a shift by at most 2 pixels keeps the centre 8x8 of each image somewhere inside
    assert torch.isclose(a.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.5).all()


def _train_args(out: Path) -> list[str]:
    return ["pi", "train", "--dataset", "synthetic", "--width", "0.0625", "--epochs", "12", "--batch-size", "32",
            "--checkpoint-every", "7", "--out", str(out), "--quiet", "--device", "cpu"]


def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run([sys.executable, "-m", "trustlab", *_train_args(tmp_path / "full")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "trustlab", *_train_args(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecar = killed / "checkpoints" / "last.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if sidecar.exists() and '"step": 2' in sidecar.read_text():  # step 21..28: mid-run
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = load_checkpoint_file(killed / "checkpoints" / "last.safetensors")
    assert not meta["done"] and 0 < meta["step"] < 12 * 16
    resumed = subprocess.run([sys.executable, "-m", "trustlab", *_train_args(killed), "--resume"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, _ = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b, meta_b = load_checkpoint_file(killed / "checkpoints" / "last.safetensors")
    assert meta_b["done"] and meta_b["step"] == 12 * 16
    for k in a:
        assert torch.equal(a[k], b[k]), k
    epochs = [m["epoch"] for m in RunDir.open(killed).metrics()]
    assert epochs == list(range(1, 13))  # no epoch logged twice after the resume


def test_ddp_two_processes_equal_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(HERE / "ddp_train.py"), str(tmp_path / "one.pt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(HERE / "ddp_train.py"),
                          str(tmp_path / "two.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "two.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(a["1.weight"], torch.zeros_like(a["1.weight"]))


def test_pi_train_runs_under_torchrun_as_the_readme_shows(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "ddp"
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "trustlab", "pi", "train",
                        "--dataset", "synthetic", "--width", "0.0625", "--epochs", "2", "--batch-size", "64",
                        "--out", str(out), "--quiet", "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [m["epoch"] for m in RunDir.open(out).metrics()] == [1, 2]  # logged once, by rank 0
    assert (out / "report.html").exists() and (out / "summary.json").exists()
