import json
import subprocess
import sys
import time


def test_help_lists_areas_and_is_fast(cli):
    t = time.time()
    r = cli("--help")
    elapsed = time.time() - t
    assert r.returncode == 0
    for area in ("data", "pi", "report"):
        assert area in r.stdout
    assert elapsed < 5  # a subprocess start included; torch is not imported


def test_help_does_not_import_torch():
    code = "import sys; from trustlab.cli import build_app; build_app(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "False"


def test_torch_jax_spu_diffusers_sklearn_import_together():
    code = ("import torch, jax, jax.numpy as jnp, spu, spu.utils.simulation, diffusers, sklearn, numpy;"
            "assert numpy.__version__.startswith('1.');"
            "print(float(jnp.ones(3).sum()) + float(torch.ones(3).sum()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.strip().endswith("6.0")


def test_report_renders_metrics_and_plot(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("pi", "train", "--dataset", "synthetic", "--width", "0.125", "--epochs", "3", "--batch-size", "32",
            "--out", str(out), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    report = out / "report.html"
    assert r.stdout.strip().splitlines()[-1] == str(report)
    page = report.read_text()
    assert "data:image/png;base64," in page and "test_acc" in page and "Per-layer ReLUs" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] > 0.5  # 4 learnable classes: far above chance after 3 epochs
    again = cli("report", str(out))
    assert again.returncode == 0 and again.stdout.strip() == str(report)


def test_report_of_non_run_folder_is_one_line_error(cli, tmp_path):
    r = cli("report", str(tmp_path))
    assert r.returncode == 2 and "not a trustlab run folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_pi_count_resnet18_reference_figures(cli):
    r = cli("pi", "count", "--model", "resnet18", "--input", "3x32x32", "--classes", "100", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["relus"] == 557_056
    assert abs(doc["macs"] / 1e9 - 0.56) < 0.01


def test_bad_model_and_input_are_one_line_errors(cli):
    for args in (["--model", "vgg99"], ["--input", "3x32"], ["--width", "-1"], ["--input", "axb"]):
        r = cli("pi", "count", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def _command(path: tuple[str, ...]):
    import typer

    from trustlab.cli import build_app

    cmd = typer.main.get_command(build_app())
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def test_command_defaults_are_the_config_defaults():
    """Each option named like a config field shows that field's default: one home for every default."""
    from dataclasses import fields

    from trustlab.pi.config import ClassifierConfig, ReductionConfig, ShallowConfig
    from trustlab.replication.config import CaptionDataConfig, DiffusionConfig
    from trustlab.spn.config import CompressConfig, FitConfig, SPNDataConfig

    teacher = ClassifierConfig()
    commands = {("pi", "train"): [teacher, teacher.data, teacher.train], ("pi", "senet"): [ReductionConfig()],
                ("pi", "snl"): [ReductionConfig(method="snl")], ("pi", "shallow"): [ShallowConfig()],
                ("spn", "fit"): [FitConfig(), SPNDataConfig()], ("spn", "compress"): [CompressConfig()],
                ("replication", "train"): [DiffusionConfig(), CaptionDataConfig()]}
    for path, configs in commands.items():
        compared = 0
        for param in _command(path).params:
            if param.required or param.default is None:  # required, or "not given": the config decides
                continue
            owner = next((c for c in configs if param.name in {f.name for f in fields(c)}), None)
            if owner is None:
                continue
            want = getattr(owner, param.name)
            want = ",".join(map(str, want)) if isinstance(want, tuple) else want
            assert param.default == want, f"{' '.join(path)} --{param.name}: {param.default!r}, config {want!r}"
            compared += 1
        assert compared >= 5, (path, compared)



def test_every_option_name_survives_an_80_column_help(monkeypatch):
    """Help wraps descriptions, never option names: a user types them from there; defaults read plainly."""
    from typer.testing import CliRunner

    from test_cli_usage import LEAVES
    from trustlab.cli import build_app

    monkeypatch.setenv("COLUMNS", "80")
    app = build_app()
    assert len(LEAVES) > 20
    for path, cmd in LEAVES:
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}).output
        assert "…" not in out and "\\[" not in out, path
        for param in cmd.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("-"):
                    assert name in out, (path, name)
        assert max(len(line) for line in out.splitlines()) <= 80, path
