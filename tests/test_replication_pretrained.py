"""Fine-tuning a local Stable Diffusion folder in latent space, on a tiny random pipeline the tests build and save."""

import json
import shutil

import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.replication.config import CaptionDataConfig, DiffusionConfig, DualFusion
from trustlab.replication.pretrained import save_random_pipeline
from trustlab.replication.training import train_diffusion
from trustlab.runs import RunDir, load_checkpoint_file

from test_replication import assert_two_processes_train_as_one, write_folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline saved as a user's folder would be: 16x16 images, 8x8x4 latents."""
    return save_random_pipeline(tmp_path_factory.mktemp("sd"))


def config(folder, pipe, steps=4, size=16, **kw):
    return DiffusionConfig(data=CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=size),
                           pretrained=str(pipe), steps=steps, batch_size=4, checkpoint_every=2, device="cpu", **kw)


def test_fine_tunes_in_latent_space_with_the_methods_and_resumes_exactly(tmp_path, pipeline):
    """LoyalDiffusion skips on SD's layout, embedding noise and dual fusion (images in latent space); a killed run resumes
    to the same weights; the UNet moved away from the pipeline's."""
    folder = write_folder(tmp_path / "imgs")
    opts = dict(rau_skips=(1, 2), tau=50, mitigations="embedding-noise",
                fusion=DualFusion(image_weight=0.1, text_weight=0.5))
    train_diffusion(config(folder, pipeline, **opts), tmp_path / "full", quiet=True)
    train_diffusion(config(folder, pipeline, **opts), tmp_path / "cut", quiet=True, max_steps=2)
    train_diffusion(config(folder, pipeline, **opts), tmp_path / "cut", quiet=True, resume=True)
    a, meta = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint_file(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert meta["done"] and set(a) == set(b)
    # Two uninterrupted runs are bitwise equal; on some CPUs (AMD EPYC with AVX-512) the resumed run's weights
    # differ from them by float rounding (at most 2e-7 here), while a resume that got anything wrong (a step,
    # the noise, the optimiser state) moves them by the order of the learning rate (1e-3).
    for k in a:
        if k.startswith("optim") or not a[k].is_floating_point():
            continue
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    s = RunDir(tmp_path / "full").summary()
    assert s["architecture"] == "loyal" and s["encoder"] == "clip" and s["pretrained"] == str(pipeline)
    from diffusers import UNet2DConditionModel

    start = UNet2DConditionModel.from_pretrained(pipeline, subfolder="unet").state_dict()
    moved = [k for k, v in start.items() if not torch.equal(v, a[f"model.high.unet.{k}"])]
    assert moved and any(k.startswith("model.high.itbs.") for k in a)


def test_cli_fine_tunes_samples_through_the_vae_and_measures(cli, tmp_path, pipeline):
    folder = write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    r = cli("replication", "train", "--pretrained", str(pipeline), "--dataset", "folder", "--folder", str(folder),
            "--n", "0", "--size", "16", "--steps", "2", "--batch-size", "4", "--quiet", "--device", "cpu", "--bf16",
            "--checkpoint-every", "0",
            "--out", str(run))
    assert r.returncode == 0, r.stderr
    r = cli("replication", "sample", str(run), "--n", "3", "--steps", "2", "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = cli("replication", "measure", str(run), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["generations"] == 3 and 0 <= m["copies"]["copy_rate"] <= 1


def test_bad_pretrained_folders_name_the_part(cli, tmp_path, pipeline):
    folder = write_folder(tmp_path / "imgs")
    base = ["replication", "train", "--dataset", "folder", "--folder", str(folder), "--n", "0", "--quiet",
            "--out", str(tmp_path / "run")]
    r = cli(*base, "--pretrained", str(folder), "--size", "16")
    assert r.returncode == 2 and "not a diffusers pipeline folder" in r.stderr and "Traceback" not in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(pipeline, broken)
    shutil.rmtree(broken / "vae")
    r = cli(*base, "--pretrained", str(broken), "--size", "16")
    assert r.returncode == 2 and "lacks its vae" in r.stderr
    r = cli(*base, "--pretrained", str(pipeline), "--size", "16", "--rau-skips", "9")
    assert r.returncode == 2 and "skip 9 does not exist" in r.stderr and "0 (16 ch, 8x8)" in r.stderr
    assert not (tmp_path / "run").exists()
    deeper = tmp_path / "deeper"  # a UNet of four levels on this VAE needs images a multiple of 2 * 2**3 pixels
    shutil.copytree(pipeline, deeper)
    unet = json.loads((deeper / "unet" / "config.json").read_text())
    (deeper / "unet" / "config.json").write_text(json.dumps({**unet, "block_out_channels": [16, 32, 32, 32]}))
    with pytest.raises(ConfigError, match="multiple of 16"):
        config(folder, deeper, size=24).validate()
    (broken / "vae").mkdir()
    (broken / "vae" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="vae folder has a config but no weights"):
        config(folder, broken).validate()


def test_two_processes_fine_tune_the_pipeline_as_one(tmp_path, pipeline):
    folder = write_folder(tmp_path / "imgs", n=8)
    assert_two_processes_train_as_one(tmp_path, ["--pretrained", str(pipeline), "--dataset", "folder", "--folder",
                                                 str(folder), "--size", "16", "--steps", "3", "--batch-size", "4",
                                                 "--checkpoint-every", "3"])


def test_v_prediction_pipelines_learn_the_velocity(tmp_path, pipeline):
    """SD 2.x at 768 predicts the velocity: the loop's target follows the folder's scheduler."""
    from trustlab.replication.pretrained import load_scheduler
    from trustlab.replication.training import noise_target

    v_pipe = tmp_path / "v"
    shutil.copytree(pipeline, v_pipe)
    config_file = v_pipe / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "v_prediction"}))
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([5, 90])
    sched = load_scheduler(str(v_pipe))
    torch.testing.assert_close(noise_target(sched, x0, noise, t), sched.get_velocity(x0, noise, t))
    assert torch.equal(noise_target(load_scheduler(str(pipeline)), x0, noise, t), noise)
    folder = write_folder(tmp_path / "imgs")
    s = train_diffusion(config(folder, v_pipe, steps=2), tmp_path / "run", quiet=True).summary()
    assert s["steps"] == 2 and s["final_loss"] == s["final_loss"]  # finite: not NaN
