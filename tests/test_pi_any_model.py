"""Private inference on models trustlab did not make: the styles of tests/pi_zoo.py and a
Hugging Face ResNet, through the graph view, the Python API and the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import trustlab.pi as pi
from pi_zoo import ZOO, VGG, FunctionalResNet
from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.graph import split_sites
from trustlab.pi.masks import install_partial_relus, partial_relus
from trustlab.pi.merge import apply_merges
from trustlab.pi.shallow_models import linearise, mergeable_blocks

NAMES = list(ZOO)


def _trained_like(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _model(name):
    torch.manual_seed(0)
    factory, shape, relus = ZOO[name]
    return _trained_like(factory()), shape, relus


@pytest.mark.parametrize("name", NAMES)
def test_count_equals_the_hand_count_whatever_form_the_relus_take(name):
    model, shape, relus = _model(name)
    acc = count(model, shape)
    assert acc.relus == relus


def test_other_nonlinear_costs_are_counted_or_named():
    shared, shape, _ = _model("shared-relu-resnet")
    pool = next(r for r in count(shared, shape).layers if r.kind == "MaxPool")
    assert pool.comparisons == 4 * 8 * 8 * (9 - 1)  # 3x3 windows: 8 comparisons per output
    mobile, shape, _ = _model("mobilenet")
    acc = count(mobile, shape)
    assert sum(r.comparisons for r in acc.layers if r.kind == "ReLU6") == 2 * (8 * 64 + 2 * 16 * 64)

    class Transformerish(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.act = nn.GELU()

        def forward(self, x):
            h = self.act(self.proj(x.flatten(1)))
            return F.softmax(h, dim=-1) * F.silu(h)

    named = count(Transformerish(), (1, 4, 4))
    assert named.relus == 0 and {r.kind for r in named.uncovered} == {"gelu", "softmax", "silu"}

    class ClampNet(nn.Module):  # a ReLU written as a clamp is a ReLU site, and maskable
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x).clamp(min=0).flatten(1)

    assert count(ClampNet(), (1, 4, 4)).relus == 32
    masked, names = install_partial_relus(ClampNet(), (1, 4, 4))
    assert len(names) == 1 and count(masked, (1, 4, 4)).relus == 32

    class ComparisonNet(nn.Module):  # ReLUs and comparisons in other words: counted, or named, never dropped
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            h = torch.clamp_min(self.conv(x), 0).clamp_max(6)
            h = torch.where(h > 1, h, 0.5 * torch.maximum(h, torch.zeros_like(h)))
            return h.flatten(1)

    acc = count(ComparisonNet(), (1, 4, 4))
    assert acc.relus == 32 and sum(r.comparisons for r in acc.layers if r.kind == "Clamp") == 32
    assert {r.kind for r in acc.uncovered} == {"gt", "where", "maximum"}
    masked, names = install_partial_relus(ComparisonNet(), (1, 4, 4))
    assert len(names) == 1 and count(masked, (1, 4, 4)).relus == 32


@pytest.mark.parametrize("name", NAMES)
def test_masks_cover_every_call_site_and_all_kept_changes_nothing(name):
    model, shape, relus = _model(name)
    masked, names = install_partial_relus(model, shape)
    prl = partial_relus(masked)
    assert sorted(prl) == sorted(names) and len(set(names)) == len(names)
    assert sum(m.units * m.unit_size for m in prl.values()) == relus  # maskable positions = ReLUs
    x = torch.randn(4, *shape)
    assert torch.equal(masked(x), _logits(model(x)))
    assert count(model, shape).relus == relus  # the user's model is not changed


def test_a_shared_module_gets_one_mask_per_place_it_is_called():
    model, shape, _ = _model("shared-relu-resnet")
    masked, names = install_partial_relus(model, shape)
    assert {"layer1.relu", "layer1.relu_2", "layer2.relu", "layer2.relu_2"} <= set(names)
    first, second = masked.get_submodule("layer2.relu"), masked.get_submodule("layer2.relu_2")
    assert first is not second and first.shape == second.shape == (8, 4, 4)
    second.mask.zero_()  # linearise only the second place: the first still clips
    x = torch.randn(3, *shape)
    out = masked(x)
    assert not torch.equal(out, model(x)) and count(masked, shape).relus == 1792 - 128


@pytest.mark.parametrize("name", NAMES)
def test_a_reduction_to_half_the_relus_trains_and_meets_the_budget_exactly(name, tmp_path):
    model, shape, relus = _model(name)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(80, *shape, generator=g), torch.arange(80) % 4
    budget = relus // 2
    method = "snl" if name == "vgg" else "senet"
    small = pi.reduce(model, (x, y), budget, method=method, out=tmp_path / "run", search_epochs=1, finetune_epochs=1,
                      batch_size=16, probe_images=32, device="cpu")
    assert count(small, shape).relus == budget
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["relus"] == budget and summary["teacher_relus"] == relus
    fresh = _model(name)[0]  # a new instance of the user's architecture rebuilds the reduced model
    again = pi.load_reduced(fresh, tmp_path / "run")
    assert torch.allclose(again(x[:4]), small(x[:4]), atol=1e-6)


@pytest.mark.parametrize("name", ["functional-resnet", "shared-relu-resnet", "hf-resnet"])
def test_shallow_merges_the_blocks_it_finds_and_the_merge_is_exact(name):
    model, shape, _ = _model(name)
    gm, _ = split_sites(model, shape)
    pairs = mergeable_blocks(gm)
    assert len(pairs) == 2
    for s in linearise(gm, pairs):
        s.slope = 1.0  # the blocks without their inner ReLU
    merged = apply_merges(gm, [p.block for p in pairs], None)
    x = torch.randn(3, *shape)
    assert (merged(x) - gm(x)).abs().max() < 1e-4
    assert count(merged, shape).relus < count(model, shape).relus


def test_shallow_through_the_api_and_a_model_without_the_pattern(tmp_path):
    model, shape, relus = _model("functional-resnet")
    x, y = torch.rand(64, *shape, generator=torch.Generator().manual_seed(2)), torch.arange(64) % 4
    flat = pi.shallow(model, (x, y), target_relu_reduction=1.2, out=tmp_path / "s", anneal_epochs=1, ring_epochs=1,
                      finetune_epochs=1, batch_size=16, probe_images=32, device="cpu")
    assert relus / count(flat, shape).relus >= 1.2
    with pytest.raises(ConfigError, match="looks for conv-BN-ReLU-conv-BN"):
        pi.shallow(VGG(), (torch.rand(40, 1, 8, 8), torch.arange(40) % 4), out=tmp_path / "no")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name", NAMES)
def test_secure_inference_gives_the_plaintext_top1(name):
    model, shape, _ = _model(name)
    masked, _ = install_partial_relus(model, shape)
    for m in partial_relus(masked).values():
        m.mask.view(-1)[::2] = False
    r = pi.secure_cost(masked, shape, protocol="semi2k")
    assert r["images"] == 2 and r["same_top1_as_plaintext"] and r["max_abs_logit_error"] < 5e-2
    assert r["nonlinear_bytes"] > 0 and r["compared_elements_per_image"] > 0


def test_secure_export_names_what_it_refuses():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x)).flatten(1)

    with pytest.raises(ConfigError, match="torch.sigmoid at 'the model's forward'"):
        pi.secure_cost(Odd(), (1, 8, 8))


def test_untraceable_models_and_rejected_shapes_are_one_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            n = int(x.sum().item() > 0)  # a branch on values: neither fx nor export can capture it
            return self.fc(x.flatten(1)[:, : 4 + n])

    with pytest.raises(ConfigError, match=r"torch.fx failed .* at test_pi_any_model.py:\d+ `n = int\(x.sum\(\).item\(\) > 0\).* and torch.export failed"):
        count(DataDependent(), (1, 2, 2))
    with pytest.raises(ConfigError, match="cannot take input 1x5x5"):
        count(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), (1, 5, 5))
    with pytest.raises(ConfigError, match="impossible: the model has 1,024 ReLUs"):
        pi.reduce(FunctionalResNet(), (torch.rand(40, 1, 8, 8), torch.arange(40) % 4), 5000, out="/nonexistent/never")


FACTORY = '''
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))


def build(num_classes, in_channels):
    return Net(num_classes, in_channels)


def not_a_model():
    return 3
'''


def _image_folder(root: Path, classes=("cat", "dog"), per_class=10, size=8, odd=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = (rng.random((size, size)) * 100 + 120 * c).astype(np.uint8)
            Image.fromarray(px, "L").save(root / name / f"{i}.png")
    (root / "README.txt").write_text("not an image")  # odd files beside the classes are skipped
    return root


def test_cli_on_a_factory_model_and_an_image_folder(cli, tmp_path, tmp_data):
    spec = tmp_path / "mymodel.py"
    spec.write_text(FACTORY)
    images = _image_folder(tmp_path / "images")
    r = cli("pi", "count", "--model", f"{spec}:build", "--input", "1x8x8", "--classes", "2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["relus"] == 4 * 64 and doc["comparisons"] == 4 * 64 + 4 * 16 * 3
    teacher = tmp_path / "teacher"
    r = cli("pi", "train", "--model", f"{spec}:build", "--dataset", "folder", "--data-dir", str(images), "--epochs", "2",
            "--batch-size", "8", "--out", str(teacher), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads((teacher / "summary.json").read_text())["classes"] == 2
    r = cli("pi", "layerdrop", "--teacher", str(teacher), "--budget", "100", "--search-epochs", "1", "--finetune-epochs", "1",
            "--batch-size", "8", "--out", str(tmp_path / "ld"), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = cli("pi", "senet", "--model", f"{spec}:build", "--dataset", "folder", "--data-dir", str(images), "--budget", "128",
            "--search-epochs", "1", "--finetune-epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "sn"), "--quiet",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "sn" / "summary.json").read_text())["relus"] == 128
    r = cli("pi", "secure-infer", str(tmp_path / "sn"), "--images", "2")
    assert r.returncode == 0 and "top-1 equal to plaintext: True" in r.stdout, r.stderr[-600:]


@pytest.mark.parametrize("args,message", [
    (["pi", "count", "--model", "{bad}:build", "--input", "1x8x8"], "does not import (SyntaxError"),
    (["pi", "count", "--model", "{spec}:not_a_model", "--input", "1x8x8"], "returned a int, not a torch.nn.Module"),
    (["pi", "count", "--model", "{spec}:missing", "--input", "1x8x8"], "defines no callable 'missing'"),
    (["pi", "count", "--model", "{spec}:build", "--input", "1x5x5"], "cannot take input 1x5x5"),
    (["pi", "train", "--model", "{spec}:build", "--dataset", "folder", "--data-dir", "{one}", "--out", "{out}"],
     "needs at least two classes"),
    (["pi", "train", "--model", "{spec}:build", "--dataset", "folder", "--data-dir", "{mixed}", "--out", "{out}"],
     "an image folder needs images of one size"),
    (["pi", "train", "--model", "{spec}:build", "--dataset", "folder", "--data-dir", "{broken}", "--out", "{out}"],
     "is not an image PIL can read"),
    (["pi", "senet", "--model", "{spec}:build", "--dataset", "folder", "--data-dir", "{images}", "--budget", "9999",
      "--out", "{out}"], "impossible"),
    (["pi", "senet", "--budget", "10", "--out", "{out}"], "give the teacher as --teacher RUN"),
])
def test_bad_models_folders_and_budgets_end_in_one_line(cli, tmp_path, tmp_data, args, message):
    from PIL import Image

    spec = tmp_path / "mymodel.py"
    spec.write_text(FACTORY)
    (tmp_path / "bad.py").write_text("def build(:\n")
    images = _image_folder(tmp_path / "images")
    one = _image_folder(tmp_path / "one", classes=("only",))
    mixed = _image_folder(tmp_path / "mixed")
    Image.new("L", (9, 9)).save(mixed / "dog" / "big.png")
    broken = _image_folder(tmp_path / "broken")
    (broken / "cat" / "x.png").write_bytes(b"not a png")
    paths = {"spec": spec, "bad": tmp_path / "bad.py", "images": images, "one": one, "mixed": mixed, "broken": broken,
             "out": tmp_path / "out"}
    r = cli(*[a.format(**paths) for a in args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()
