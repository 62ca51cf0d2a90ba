"""Copy detection on folders users bring: duplicate groups before calibration, edited copies caught."""

import json

import pytest
import torch
import torch.nn.functional as F

from trustlab.errors import ConfigError
from trustlab.replication.duplicates import find_duplicates
from trustlab.replication.metrics import calibrate, compare, image_rows
from trustlab.replication.registration import (CROPS, VERSION, VIEWS, aligned_nearest, centred_unit, ecc, grey, mirror_view,
                                               retrieval_vectors, similarity, soft_chroma, warp)


def _pictures(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields with a bright square: structure at every scale, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 5, 5, generator=g) * 2 - 1
    x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    for i in range(n):
        a, b = torch.randint(0, size - size // 3, (2,), generator=g).tolist()
        x[i, :, a : a + size // 4, b : b + size // 4] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x.clamp(-1, 1)


def test_duplicate_groups_and_calibration_on_one_image_per_group():
    distinct = _pictures(80, 16, 0)
    twins = distinct[[3, 7, 11]] + 0.004 * torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = image_rows(torch.cat([distinct, twins, distinct[20:21].flip(-1)]))  # three noisy twins, one mirrored twin
    dup = find_duplicates(rows, 16)
    assert dup.groups() == [[3, 80], [7, 81], [11, 82], [20, 83]]
    assert len(dup.representatives()) == 80
    threshold, source = calibrate(rows, 16, "pixel", dup, limit=1000, seed=0)
    unit = centred_unit(distinct).double()
    sim = unit @ unit.T
    sim.fill_diagonal_(-2)
    assert threshold == pytest.approx(float(torch.quantile(sim.max(1).values, 0.99)), abs=1e-5)  # the distinct images alone
    assert threshold < 0.98 and "one image per group" in source
    naive = find_duplicates(rows, 16, level=1.0)  # no grouping: the twins set the threshold
    assert calibrate(rows, 16, "pixel", naive, limit=1000, seed=0)[0] > 0.99


def test_all_duplicates_is_refused():
    one = _pictures(1, 16, 0)
    rows = image_rows(one.expand(5, -1, -1, -1))
    with pytest.raises(ConfigError, match="all duplicates"):
        compare(rows[:1], rows, 16, calibration=10, background=4)


def test_registration_undoes_crops_shifts_rotations_mirrors_and_grey():
    train = _pictures(60, 32, 2)
    src = torch.arange(0, 50, 10)
    params = torch.tensor([[0.16, 0.16, 0.0, 0.08, -0.06],  # a crop of 85% of the side
                           [0.0, 0.0, 0.0, 0.12, 0.1],  # a shift of 6% of the side
                           [0.0, 0.0, 0.14, 0.0, 0.0],  # a rotation of 8 degrees
                           [0.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0]])
    edited = warp(train[src], params)
    edited[3] = edited[3].flip(-1)
    grey = 0.299 * edited[4, 0] + 0.587 * edited[4, 1] + 0.114 * edited[4, 2]
    edited[4] = grey.expand(3, -1, -1)
    score, match, is_grey = aligned_nearest(image_rows(edited), image_rows(train), 32)
    assert match.tolist() == src.tolist() and is_grey.tolist() == [False, False, False, False, True]
    assert bool((score > 0.98).all()), score
    plain = (centred_unit(edited) @ centred_unit(train).T)[torch.arange(5), src]
    assert bool((score[:4] > plain[:4] + 0.02).all())  # the pixel similarity alone is lower for every geometric edit


def test_a_letterboxed_copy_is_found():
    """A copy shown at 75-85% of the side inside a uniform border is matched to its source, and scores above its
    pixel similarity (the registration converges fully on some, not all: recall on real sets is benchmarked)."""
    train = _pictures(200, 32, 4)
    src = torch.tensor([5, 50, 120, 190])
    edited = train[src].clone()
    for i, k in enumerate((24, 26, 27, 25)):
        small = F.interpolate(train[src[i]][None], size=(k, k), mode="bicubic", align_corners=False)[0]
        edited[i] = train[src[i], :, :1, :1]  # the corner colour fills the border
        o = (32 - k) // 2
        edited[i, :, o : o + k, o : o + k] = small
    score, match, _ = aligned_nearest(image_rows(edited), image_rows(train), 32)
    plain = (centred_unit(edited) * centred_unit(train[src])).sum(1)
    assert match.tolist() == src.tolist() and bool((score > plain + 0.05).all()), (match, score)
    assert int((score > 0.99).sum()) >= 2, score


def test_a_shifted_copy_is_not_held_to_its_filled_border():
    """Content that touches the image's edge, shifted by two pixels over a black fill: once aligned, the copy is
    its source (the similarity counts the covered pixels up to the edge, not one continued pixel beyond it)."""
    train = _pictures(50, 32, 5)
    edited = torch.full((2, 3, 32, 32), -1.0)
    edited[0, :, 2:, :] = train[7, :, :-2, :]  # down
    edited[1, :, :, :-2] = train[30, :, :, 2:]  # left
    truth = torch.tensor([[0.0, 0.0, 0.0, 0.0, -0.125], [0.0, 0.0, 0.0, 0.125, 0.0]])
    assert bool((similarity(edited, train[[7, 30]], truth) > 0.9999).all())
    score, match, _ = aligned_nearest(image_rows(edited), image_rows(train), 32)
    assert match.tolist() == [7, 30] and bool((score > 0.999).all()), (match, score)


def test_a_jpeg_copy_keeps_its_shape_and_softened_colours():
    """JPEG at quality 30 keeps colour at half resolution, in blocks: with the chroma averaged over 3x3 pixels the
    copy is closer to its source than pixel for pixel, and the luminance (and a grey image) is left as it is."""
    import io

    import numpy as np
    from PIL import Image

    train = _pictures(6, 32, 8)
    copies = []
    for x in train:
        buf = io.BytesIO()
        Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(buf, format="JPEG", quality=30)
        copies.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1)
    copies = torch.stack(copies)
    soft = similarity(copies, train, torch.zeros(6, 5))
    plain = (centred_unit(copies) * centred_unit(train)).sum(1)
    assert bool((soft > plain).all()), (soft, plain)
    everywhere = torch.ones(6, 32, 32, dtype=torch.bool)
    assert torch.allclose(grey(soft_chroma(train, everywhere)), grey(train), atol=1e-5)
    lum = grey(train).expand(-1, 3, -1, -1)
    assert torch.allclose(soft_chroma(lum, everywhere), lum, atol=1e-5)


def test_every_view_has_a_mirrored_twin():
    """Each retrieved image is registered in both mirror states: the twin view differs only in the mirroring."""
    views = torch.arange(len(VIEWS))
    twin = mirror_view(views)
    assert twin[twin].tolist() == views.tolist()
    for v, t in zip(views.tolist(), twin.tolist()):
        assert VIEWS[v][0] != VIEWS[t][0] and torch.equal(VIEWS[v][1], VIEWS[t][1])


def test_crop_views_of_the_training_images_equal_warping_each_image():
    """The crop views are computed as two small maps per view (rows, columns), not by warping every image."""
    from trustlab.replication.registration import SHORTLIST_SIDE, _candidate_warp, _vector

    train = _pictures(40, 24, 3)
    coarse, fine = retrieval_vectors(train)
    assert coarse.shape[0] == fine.shape[0] == 1 + len(CROPS)
    for j, p in enumerate(CROPS):
        warped = warp(grey(train), _candidate_warp(p).expand(len(train), -1))
        assert torch.allclose(fine[1 + j], _vector(warped), atol=1e-5)
        assert torch.allclose(coarse[1 + j], _vector(warped, SHORTLIST_SIDE), atol=1e-5)


def test_ecc_recovers_the_warp_a_copy_underwent():
    train = _pictures(4, 32, 6)
    truth = torch.tensor([[0.12, 0.05, 0.1, 0.1, -0.08], [-0.1, -0.1, -0.15, -0.05, 0.12],
                          [0.0, 0.0, 0.2, 0.0, 0.0], [0.18, 0.18, 0.0, 0.0, 0.0]])
    edited = warp(train, truth)
    found = ecc(grey(edited), grey(train), torch.zeros(4, 5), steps=30)
    assert torch.allclose(found, truth, atol=0.01), found


def _write(folder, pictures, names, side=48):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for x, name in zip(pictures, names):
        a = ((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(a).resize((side, side), Image.BICUBIC).save(folder / name, quality=90)


def test_audit_finds_edited_copies_and_reports_duplicates(cli, tmp_path):
    from PIL import Image

    train = _pictures(120, 48, 3)
    _write(tmp_path / "train", torch.cat([train, train[:3]]), [f"{i:03d}.png" for i in range(120)] + ["twin0.jpg", "twin1.jpg", "twin2.jpg"])
    gen = tmp_path / "gen"
    _write(gen, _pictures(20, 48, 4), [f"other{i}.png" for i in range(20)])  # look-alikes: not in the training folder
    source = {"crop": 30, "shift": 40, "mirror": 50, "grey": 60}
    im = {k: Image.open(tmp_path / "train" / f"{i:03d}.png") for k, i in source.items()}
    im["crop"].crop((3, 5, 44, 46)).save(gen / "crop.png")
    im["shift"].rotate(0, translate=(3, -2), fillcolor=(128, 128, 128)).save(gen / "shift.png")
    im["mirror"].transpose(Image.FLIP_LEFT_RIGHT).save(gen / "mirror.jpg", quality=80)
    im["grey"].convert("L").save(gen / "grey.png")
    out = tmp_path / "audit"
    r = cli("replication", "audit", "--generated", str(gen), "--train", str(tmp_path / "train"),
            "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["copy_metric"] == "aligned" and s["duplicates"]["groups"] == 3 and s["duplicates"]["images_in_groups"] == 6
    assert s["copy_metric_version"] == VERSION  # what a benchmark compares before it reuses a stored measurement
    rows = [line.split(",") for line in (out / "nearest.csv").read_text().splitlines()[1:]]
    flagged = {r[0].rsplit("/", 1)[1]: r[1].rsplit("/", 1)[1] for r in rows if r[-1] == "1"}
    assert {k: flagged.get(f"{k}.png" if k != "mirror" else "mirror.jpg") for k in source} == \
        {k: f"{i:03d}.png" for k, i in source.items()}
    assert len(flagged) - 4 <= 2  # a p99 calibration lets about 1% of look-alikes through: at most 2 of these 20
    assert (out / "plots" / "duplicates.png").exists() and "near-duplicate" in (out / "report.html").read_text().lower()


def test_copy_settings_bad_input_is_one_line(cli, tmp_path):
    train = _pictures(6, 16, 5)
    _write(tmp_path / "train", train, [f"{i}.png" for i in range(6)], side=16)
    _write(tmp_path / "same", train[:1].expand(4, -1, -1, -1), [f"{i}.png" for i in range(4)], side=16)
    for args, message in ((["--size", "8"], "too small to align"), (["--copy-metric", "hash"], "--copy-metric"),
                          (["--duplicate-level", "1.5"], "--duplicate-level")):
        r = cli("replication", "audit", "--generated", str(tmp_path / "train"), "--train", str(tmp_path / "train"),
                "--out", str(tmp_path / "x"), "--quiet", *args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli("replication", "audit", "--generated", str(tmp_path / "train"), "--train", str(tmp_path / "same"),
            "--out", str(tmp_path / "y"), "--size", "16", "--quiet")
    assert r.returncode == 2 and "all duplicates" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_learned_descriptor_is_cached_by_the_folder_fingerprint_and_respects_groups(tmp_data):
    """The learned copy metric trains on the training rows once: the same rows reuse the cached weights,
    changed rows (or another version) train again; too few images is one line; excluded groups never match."""
    import numpy as np

    from trustlab.replication import descriptor

    rows = (torch.rand(24, 3 * 16 * 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).numpy()
    first = descriptor.train_descriptor(rows, 16, steps=2)
    cached = list((tmp_data / "cache" / "copy-descriptors").glob("*.safetensors"))
    assert len(cached) == 1
    again = descriptor.train_descriptor(rows, 16, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    descriptor.train_descriptor(rows[:-1], 16, steps=2)  # another folder: trained, cached beside the first
    assert len(list((tmp_data / "cache" / "copy-descriptors").glob("*.safetensors"))) == 2
    with pytest.raises(ConfigError, match="too few"):
        descriptor.train_descriptor(rows[:5], 16, steps=2)
    groups = np.arange(24)
    score, match = descriptor.learned_nearest(rows[:4], rows, 16, exclude=(groups[:4], groups), steps=2)
    assert not (match == torch.arange(4)).any() and (score <= 1.0 + 1e-6).all()
