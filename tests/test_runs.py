from dataclasses import dataclass, field

import pytest
import torch

from trustlab.errors import ConfigError, RunError
from trustlab.runs import RunDir, config_from_dict, load_checkpoint_file


@dataclass(frozen=True)
class Inner:
    a: int = 1
    xs: tuple = (1, 2)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    maybe: float | None = None


def test_config_roundtrip_through_yaml(tmp_path):
    cfg = Outer("run", Inner(3, (4, 5)), 0.5)
    RunDir.create(tmp_path / "r", cfg, kind="test")
    assert config_from_dict(Outer, RunDir.open(tmp_path / "r", kind="test").config) == cfg


def test_existing_run_is_not_overwritten(tmp_path):
    RunDir.create(tmp_path / "r", Outer(), kind="test")
    with pytest.raises(RunError, match="--resume"):
        RunDir.create(tmp_path / "r", Outer(), kind="test")


def test_wrong_kind_is_refused(tmp_path):
    RunDir.create(tmp_path / "r", Outer(), kind="a")
    with pytest.raises(RunError, match="'a' run"):
        RunDir.open(tmp_path / "r", kind="b")


def test_checkpoint_roundtrip_keeps_dtypes_and_meta(tmp_path):
    run = RunDir.create(tmp_path / "r", Outer(), kind="test")
    tensors = {"w": torch.randn(3, 4), "mask": torch.rand(2, 5) > 0.5, "n": torch.tensor(7)}
    run.save_checkpoint(tensors, {"step": 12, "note": "hi"})
    back, meta = run.load_checkpoint()
    assert meta == {"step": 12, "note": "hi"}
    assert back["mask"].dtype == torch.bool and torch.equal(back["mask"], tensors["mask"])
    assert torch.equal(back["w"], tensors["w"])
    assert not list((tmp_path / "r" / "checkpoints").glob(".*tmp"))  # no temporary file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    run = RunDir.create(tmp_path / "r", Outer(), kind="test")
    p = run.save_checkpoint({"w": torch.randn(100)}, {"step": 1})
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(RunError, match="truncated or corrupt"):
        load_checkpoint_file(p)


def test_metrics_truncation_and_cut_lines(tmp_path):
    run = RunDir.create(tmp_path / "r", Outer(), kind="test")
    for s in range(5):
        run.log(s, loss=float(s))
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 5, "lo')  # a line cut by a kill
    assert [m["step"] for m in run.metrics()] == [0, 1, 2, 3, 4]
    run.truncate_metrics(2)
    assert [m["step"] for m in run.metrics()] == [0, 1, 2]


def test_report_reads_like_a_results_section(tmp_path):
    from trustlab.report import plot_metric_curves, render_report

    teacher = RunDir.start(tmp_path / "teacher", Outer(), "test", False)
    run = RunDir.start(tmp_path / "student", Outer(), "test", False)
    run.write_summary({"method": "senet", "teacher": str(teacher.path), "macs": 28_573_184, "relus": 54_272,
                       "acc_drop_points": 1.45, "test_acc": 0.9083, "relu_reduction": 2.0,
                       "exact_tt_parameters": 8 * 10**63, "ratio_vs_exact_tspn": 9.49e59})
    run.log(100, lr=0.01)  # one point: no panel
    assert plot_metric_curves(run) is None
    run.log(200, lr=0.005, train_loss=0.5)
    run.log(300, train_loss=0.4)
    page = render_report(run.path).read_text()
    for shown in ("90.83%", "+1.45 points", "28.6 M", "54,272", "2.00×", "<td>../teacher</td>", "8.00e+63", "9.49e+59×"):
        assert shown in page, shown
    assert page.index("test_acc") < page.index("acc_drop_points") < page.index("method")  # headline figures first


def test_job_settles_the_config_and_makes_the_folder_only_when_it_starts(tmp_path, capsys):
    from trustlab.runs import Job
    from trustlab.spn.config import CompressConfig, FitConfig

    first = CompressConfig(source="spn-run", ranks=(4,))
    job = Job(first, tmp_path / "run", resume=False)
    assert not (tmp_path / "run").exists()  # nothing on disk until the inputs have loaded
    assert job.start().kind == "spn-compress" and (tmp_path / "run" / "config.yaml").exists()
    with pytest.raises(RunError, match="already exists"):  # said before the inputs load, not after
        Job(first, tmp_path / "run", resume=False)
    assert Job(first, tmp_path / "run", resume=True).config == first and capsys.readouterr().err == ""
    Job(CompressConfig(source="./spn-run", ranks=(4,)), tmp_path / "run", resume=True)  # one folder named two ways
    assert capsys.readouterr().err == ""
    assert Job(CompressConfig(source="other", ranks=(8,)), tmp_path / "run", resume=True).config == first
    said = capsys.readouterr().err  # the settings a resumed run does not take are named, not dropped quietly
    assert "started with" in said and "source: 'spn-run' (asked: 'other')" in said and "ranks: (4,) (asked: (8,))" in said
    with pytest.raises(ConfigError, match="rank"):
        Job(CompressConfig(ranks=(0,)), tmp_path / "bad", resume=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(RunError, match="spn-compress"):
        Job(FitConfig(), tmp_path / "run", resume=True)  # a folder of another kind is not resumed as this one


def test_a_resumed_stage_keeps_the_records_of_the_stages_before_it(tmp_path):
    run = RunDir.create(tmp_path / "r", {"a": 1}, "k")
    run.log(156, stage="search", train_loss=1.0)
    run.log(100, stage="finetune", train_loss=0.5)
    run.log(156, stage="finetune", train_loss=0.4)
    run.truncate_metrics(100, "finetune")  # fine-tuning resumes from its step-100 checkpoint
    assert [(m["stage"], m["step"]) for m in run.metrics()] == [("search", 156), ("finetune", 100)]


def test_report_draws_a_line_per_stage_or_sweep_point(tmp_path):
    from trustlab.report import _segments, plot_metric_curves

    run = RunDir.create(tmp_path / "r", {"a": 1}, "k")
    for rank in (2, 4):
        for epoch in (1, 2, 3):
            run.log(epoch, rank=rank, valid_ll=-7.0 + epoch / rank)
    parts = _segments(run.metrics())
    assert [[r["step"] for r in p] for p in parts] == [[1, 2, 3], [1, 2, 3]]
    assert plot_metric_curves(run).exists()
