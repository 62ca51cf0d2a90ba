import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from trustlab.errors import ConfigError
from trustlab.pi.masks import install_partial_relus
from trustlab.pi.models import build_model
from trustlab.pi.secure import export_jax, parse_profile, run_secure
from trustlab.pi.graph import split_sites
from trustlab.pi.merge import apply_merges

SHAPE = (1, 12, 12)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    m = build_model("resnet18", 4, 1, 0.0625).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    half, _ = install_partial_relus(m, SHAPE)
    for q in half.modules():
        if hasattr(q, "kept_relus"):
            q.mask.view(-1)[::2] = False
    return {"all": m, "half": half.eval(), "shallow": apply_merges(split_sites(m, SHAPE)[0], ["layer1.0", "layer2.0"], 3)}


@pytest.mark.parametrize("name,mode", [("all", "gather"), ("half", "gather"), ("half", "naive"), ("shallow", "gather")])
def test_exported_jax_function_equals_the_torch_model(models, name, mode):
    x = torch.rand(3, *SHAPE)
    e = export_jax(models[name], SHAPE, mode)
    got = np.asarray(e.fn(x.numpy(), *e.weights))
    assert np.abs(got - models[name](x).detach().numpy()).max() < 1e-5


def test_secure_semi2k_matches_plaintext_and_gather_halves_comparisons(models):
    x = torch.rand(2, *SHAPE)
    full = run_secure(export_jax(models["all"], SHAPE), x.numpy(), "semi2k")
    half = run_secure(export_jax(models["half"], SHAPE, "gather"), x.numpy(), "semi2k")
    naive = run_secure(export_jax(models["half"], SHAPE, "naive"), x.numpy(), "semi2k")
    plain = models["all"](x).detach().numpy()
    assert (full["logits"].argmax(1) == plain.argmax(1)).all() and np.abs(full["logits"] - plain).max() < 1e-2
    assert full["nonlinear_bytes"] / half["nonlinear_bytes"] >= 1.9
    assert naive["nonlinear_bytes"] >= 0.8 * full["nonlinear_bytes"]  # the masked form saves (almost) nothing
    assert full["rounds"] > 0 and full["linear_bytes"] > 0


def test_unsupported_layers_are_named(models):
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(200, 2))
    with pytest.raises(ConfigError, match="nn.Sigmoid at '1' .* is not supported for secure inference"):
        export_jax(m, SHAPE)
    with pytest.raises(ConfigError, match="protocol"):
        run_secure(export_jax(models["all"], SHAPE), np.zeros((1, *SHAPE), np.float32), "spdz")


def test_profile_parser_reads_spu_lines():
    text = ("[info] - pphlo.convolution, executed 2 times, duration 0.5s, send bytes 100 recv bytes 100, send actions 2, recv actions 2\n"
            "[info] - pphlo.less, executed 1 times, duration 0.1s, send bytes 40 recv bytes 40, send actions 7, recv actions 7\n"
            "[info] Link details: total send bytes 140, recv bytes 140, send actions 9, recv actions 9\n")
    p = parse_profile(text)
    assert p["total_bytes"] == 280 and p["nonlinear_bytes"] == 80 and p["linear_bytes"] == 200 and p["rounds"] == 9


def test_secure_infer_and_cost_cli(cli, tmp_path):
    run = tmp_path / "t"
    r = cli("pi", "train", "--dataset", "synthetic", "--width", "0.0625", "--epochs", "1", "--batch-size", "64",
            "--out", str(run), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = cli("pi", "secure-infer", str(run), "--protocol", "semi2k", "--images", "2")
    assert r.returncode == 0, r.stderr[-800:]
    assert "top-1 equal to plaintext: True" in r.stdout
    assert (run / "secure" / "semi2k-gather-secret.json").exists()
    c = cli("pi", "cost", str(run))
    assert c.returncode == 0 and "GC storage" in c.stdout and "measured SPU semi2k-gather-secret" in c.stdout
    assert cli("pi", "secure-infer", str(run), "--protocol", "spdz").returncode == 2
    senet = tmp_path / "senet"
    budget = json.loads((run / "summary.json").read_text())["relus"] // 2
    r = cli("pi", "senet", "--teacher", str(run), "--budget", str(budget), "--search-epochs", "1", "--finetune-epochs", "1",
            "--batch-size", "64", "--out", str(senet), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    moved = tmp_path / "elsewhere"  # a chained run moves with its teacher; the teacher's path as given is gone
    moved.mkdir()
    for d in (run, senet):
        d.rename(moved / d.name)
    r = cli("pi", "secure-infer", str(moved / "senet"), "--protocol", "semi2k", "--images", "1")
    assert r.returncode == 0 and "top-1 equal to plaintext: True" in r.stdout and f"{budget:,} ReLUs" in r.stdout, r.stderr[-800:]
