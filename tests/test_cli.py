"""The command line, end to end in a subprocess."""
import argparse
import json
import subprocess
import sys

import pytest

from dsearch import preset, spec_cost, with_conv


def run(*args):
    return subprocess.run([sys.executable, "-m", "dsearch", *args], capture_output=True, text=True, timeout=120)


def test_cost_json_matches_library():
    proc = run("cost", "resnet20", "--conv", "scc", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    expected = spec_cost(with_conv(preset("resnet20"), "scc"))
    assert data["macs"] == expected.macs
    assert data["mparams"] == expected.mparams
    assert data["resolution"] == 32


def test_cost_table_and_arch_file(tmp_path):
    spec = preset("mobilenet_v2", width=0.5, num_classes=10, in_channels=1)
    path = tmp_path / "arch.json"
    path.write_text(spec.to_json(indent=2))
    proc = run("cost", str(path), "--resolution", "112")
    assert proc.returncode == 0, proc.stderr
    assert f"{spec_cost(spec, 112).mflops:.2f} MFLOPs at 112x112" in proc.stdout
    assert "#flops" in proc.stdout  # fvcore's per-layer table


def test_cost_bad_inputs_give_one_line(tmp_path, capsys):
    from dsearch.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**preset("resnet20").to_dict(), "num_classes": "ten"}))
    for args, needle in [
        (("cost", "nosuchnet"), "neither a preset"),
        (("cost", str(bad)), "num_classes: must be an integer"),
        (("cost", "resnet20", "--conv", "fancy"), "unknown conv kind 'fancy'"),
    ]:
        code = main(list(args))  # in process; the exit code of a real process is tested by the other CLI tests
        out, err = capsys.readouterr()
        assert code == 2
        assert needle in err
        assert len(err.strip().splitlines()) == 1
        assert out == ""


def _subparsers():
    from dsearch.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_option_has_help_and_shows_its_default():
    _, commands = _subparsers()
    assert set(commands) == {"cost", "run", "show", "baselines", "dashboard", "export", "train", "audit", "spaces",
                             "latency"}
    for name, sub in commands.items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest} has no help text"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in " ".join(text.split()), f"{name} {action.dest}"
            elif action.option_strings and action.default is None:
                assert "default" in action.help, f"{name} {action.dest}: say what happens when it is not given"


def test_cli_defaults_and_choices_come_from_the_configs_and_registries():
    from dsearch.model.ops import CONV_TYPES
    from dsearch.search.config import PRUNER_FACTORIES, SAMPLER_FACTORIES, SearchConfig
    from dsearch.training.full import FullTrainConfig
    from dsearch.training.proxy import OPTIMIZERS, ProxyConfig

    parser, commands = _subparsers()
    run = parser.parse_args(["run"])
    search, proxy = SearchConfig(), ProxyConfig()
    for field in ("space", "dataset", "budget_mflops", "budget_mparams", "resolution", "objective", "sampler",
                  "pruner", "seed", "device"):
        assert getattr(run, field) == getattr(search, field), field
    for field in ("epochs", "batch_size", "train_subset", "train_resolution", "optimizer", "lr"):
        assert getattr(run, field) == getattr(proxy, field), field
    train = parser.parse_args(["train", "x"])
    full = FullTrainConfig()
    assert (train.epochs, train.label_smoothing) == (full.proxy.epochs, full.proxy.label_smoothing)

    def choices(command, dest):
        return next(a.choices for a in commands[command]._actions if a.dest == dest)

    assert choices("run", "sampler") == list(SAMPLER_FACTORIES) and choices("run", "pruner") == list(PRUNER_FACTORIES)
    assert choices("run", "optimizer") == list(OPTIMIZERS) == choices("train", "optimizer")
    conv_help = next(a.help for a in commands["cost"]._actions if a.dest == "conv")
    assert all(kind in conv_help for kind in CONV_TYPES)


def test_version_and_help_exit_cleanly():
    from dsearch import __version__
    from dsearch.cli import main

    for argv in (["--version"], ["run", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    assert __version__
