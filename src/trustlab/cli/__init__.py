"""The ``trustlab`` command: one typer app with a sub-command per area.

Commands are thin: parse, call the library, print. Heavy libraries are imported inside the
commands that need them, so ``trustlab --help`` and the TinyML commands answer at once.
A :class:`~trustlab.errors.TrustlabError` prints one line and exits 2 (``--debug`` shows
the traceback). Ctrl-C (SIGINT) and SIGTERM end a command with one line and exit 130 / 143, so
that ``make`` or a ``&&`` chain stops; every checkpoint is written atomically, so the run folder
holds the last complete one and ``--resume`` continues from it.
"""

from __future__ import annotations

import signal
import sys
from importlib import import_module

import typer

from trustlab.cli.apps import new_app
from trustlab.errors import TrustlabError

AREAS = {  # command: (the module whose ``app`` holds its commands, its line in ``trustlab --help``)
    "data": ("trustlab.cli.data", "Offline datasets: list, fetch."),
    "pi": ("trustlab.cli.pi", "Private inference: ReLU accounting, SENet/SNL/layer-drop, shallow models, secure inference."),
    "replication": ("trustlab.cli.replication",
                    "Replication in diffusion models: testbed training, sampling, replication and quality metrics."),
    "spn": ("trustlab.cli.spn", "Tensor SPNs: learn SPNs, map them onto tensor trains, compress, evaluate."),
    "tinyml": ("trustlab.cli.tinyml", "TinyML security: taxonomy, CVSS-scored attacks, defenses, assessment."),
}

_debug = {"on": False}


def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _debug["on"] = debug


def report(run_dir: str = typer.Argument(..., help="A run folder written by a trustlab command.")) -> None:
    """Render a run folder to a self-contained HTML report."""
    from trustlab.report import render_report

    print(render_report(run_dir))


def build_app(areas: set[str] | None = None) -> typer.Typer:
    """The ``trustlab`` app with the commands of ``areas`` (default: every area).

    The other areas appear in ``trustlab --help`` with their line but are not imported: a command
    reads only its own area's module, so ``trustlab --help`` and ``trustlab tinyml score`` start
    without building the options of every other command.
    """
    app = new_app(help="trustlab: private inference, diffusion replication, tensor SPNs and TinyML security, on your own data.",
                  pretty_exceptions_enable=False, add_completion=False)
    app.callback()(_root)
    app.command("report")(report)
    for name, (module, line) in AREAS.items():
        sub = import_module(module).app if areas is None or name in areas else new_app()
        app.add_typer(sub, name=name, help=line)
    return app


def _area(argv: list[str]) -> set[str]:
    """The area a command line names (its first word that is not an option), if any."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return {first} & set(AREAS)


def _usage_error_type() -> type[Exception]:
    """The ``ClickException`` class of the click that typer actually runs on.

    typer < 0.2x re-exports ``click``'s exceptions; newer releases vendor their own copy of
    click (``typer._click``), whose exceptions are not ``click.ClickException``. Both expose
    ``typer.BadParameter``, whose ancestry names the right base class either way.
    """
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


INTERRUPTED = "interrupted: rerun with --resume to continue from the last checkpoint"


class Terminated(BaseException):
    """SIGTERM, raised where the command is (a BaseException, so that no handler of the command swallows it)."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _debug["on"] = "--debug" in argv
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = build_app(_area(argv))(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:  # typer hands an interrupt (130) or a typer.Exit(code) back as a value
            if code == 130:
                print(INTERRUPTED, file=sys.stderr)
            return code
        if "torch.distributed" in sys.modules:  # only commands that trained can have a process group
            from trustlab.train import finish_distributed

            finish_distributed()
    except TrustlabError as e:
        if _debug["on"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except _usage_error_type() as e:  # unknown command or option, a word where a number goes, ...
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Terminated:
        print(INTERRUPTED.replace("interrupted", "terminated"), file=sys.stderr)
        return 143
    return 0
