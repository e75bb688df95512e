"""The docs cannot go stale: the CLI reference against the parser, and docs/extending.md's example against the code."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsearch.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"
CLI_MD = DOCS / "cli.md"
EXTENDING_MD = DOCS / "extending.md"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Options every command takes, documented once under "Global options" (--debug is accepted after any command).
GLOBAL = {"-h", "--help", "--debug"}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def sections(text: str) -> dict[str, str]:
    """The text under each '## dsearch <command>' heading, up to the next '## ' heading."""
    found = {}
    for m in re.finditer(r"^## dsearch (\S+)\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        found[m.group(1)] = m.group(2)
    return found


def global_section(text: str) -> str:
    m = re.search(r"^## Global options\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "docs/cli.md has no '## Global options' section"
    return m.group(1)


def check_cli_reference(text: str) -> list[str]:
    """Every disagreement between a CLI reference text and the parser, as readable lines."""
    parser = build_parser()
    commands = subcommands(parser)
    found = sections(text)
    problems = [f"command {name!r} has no '## dsearch {name}' section" for name in commands if name not in found]
    problems += [f"section 'dsearch {name}' documents no such command" for name in found if name not in commands]
    top = option_strings(parser)
    glob = global_section(text)
    problems += [f"global option {opt} is not in 'Global options'" for opt in sorted(top) if f"`{opt}" not in glob]
    problems += [f"'Global options' mentions {opt}, which is no global option"
                 for opt in sorted(set(OPTION.findall(glob)) - top - GLOBAL)]
    for name, sub in commands.items():
        body = found.get(name, "")
        options = option_strings(sub)
        for opt in sorted(options - GLOBAL):
            if not re.search(rf"^\| `{re.escape(opt)}`", body, re.M):
                problems.append(f"dsearch {name}: option {opt} has no row in its section")
        for opt in sorted(set(OPTION.findall(body)) - options - GLOBAL):
            problems.append(f"dsearch {name}: its section mentions {opt}, which the parser does not have")
    return problems


def test_cli_reference_matches_the_parser():
    assert check_cli_reference(CLI_MD.read_text()) == []


def test_cli_reference_check_can_fail():
    text = CLI_MD.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `--final-seeds`"))
    assert any("--final-seeds" in p for p in check_cli_reference(text.replace(row + "\n", "")))
    invented = text.replace("| `--no-finals` |", "| `--no-such-option` | off | nothing |\n| `--no-finals` |")
    assert any("--no-such-option" in p for p in check_cli_reference(invented))
    renamed = text.replace("## dsearch audit\n", "## dsearch audits\n")
    assert any("'audit'" in p for p in check_cli_reference(renamed))


def test_cli_reference_lists_every_environment_variable():
    package = Path(__file__).resolve().parent.parent / "dsearch"
    names = {n for path in package.rglob("*.py") for n in re.findall(r"DSEARCH_[A-Z_]+", path.read_text())}
    assert names, "found no DSEARCH_ variable in the code"
    text = CLI_MD.read_text()
    env = text[text.index("## Environment variables"):]
    assert sorted(n for n in names if f"`{n}`" not in env) == []


def code_blocks(text: str) -> dict[str, str]:
    """Fenced code blocks that carry a title="..." attribute, by title."""
    return {m.group(1): m.group(2) for m in re.finditer(r'^```\w+ title="([^"]+)"\n(.*?)^```', text, re.M | re.S)}


EXAMPLE_RUNNER = textwrap.dedent('''
    """Plays docs/extending.md's steps in a fresh interpreter, then checks them."""
    import dataclasses
    import json
    import sys
    import types

    import yaml

    blocks = json.loads(sys.stdin.read())

    # 1. the module, as if appended to dsearch/model/layers.py
    import dsearch.model.layers as layers
    exec(compile(blocks["dsearch/model/layers.py"], "dsearch/model/layers.py (docs)", "exec"), vars(layers))

    # 2. the registration, as the module dsearch.model.ops.gdsc (relative imports resolve from its package)
    module = types.ModuleType("dsearch.model.ops.gdsc")
    module.__package__ = "dsearch.model.ops"
    sys.modules[module.__name__] = module
    exec(compile(blocks["dsearch/model/ops/gdsc.py"], "dsearch/model/ops/gdsc.py (docs)", "exec"), vars(module))

    from dsearch import build_model, count_cost, spec_cost
    from dsearch.model.ops import CONV_TYPES
    from dsearch.search.spaces import load_space, parse_space, sample

    assert "gdsc" in CONV_TYPES
    assert hasattr(layers, CONV_TYPES["gdsc"].standalone), "standalone must name the module in layers.py"

    # 3. the page's tests
    tests = {}
    exec(compile(blocks["tests/model/test_gdsc.py"], "tests/model/test_gdsc.py (docs)", "exec"), tests)
    ran = [name for name in sorted(tests) if name.startswith("test_") and callable(tests[name])]
    for name in ran:
        tests[name]()
    assert len(ran) >= 3, ran

    # 4. the space: parsed from its data and loaded from a file; a sample using gdsc costs what fvcore counts
    text = blocks["grouped.yaml"]
    space = parse_space(yaml.safe_load(text), "grouped.yaml")
    path = sys.argv[1]
    with open(path, "w") as f:
        f.write(text)
    assert load_space(path) == dataclasses.replace(space, path=path)

    class Last:  # picks the last choice everywhere: gdsc, 4 groups, the widest widths
        def suggest_categorical(self, name, choices):
            return choices[-1]

    spec = sample(space, Last(), in_channels=1, num_classes=10)
    assert {st.conv.kind for st in spec.stages} == {"dsc", "gdsc"}, spec.summary()
    counted = count_cost(build_model(spec), (1, space.resolution, space.resolution))
    assert (spec_cost(spec).macs, spec_cost(spec).params) == (counted.macs, counted.params)
    print("ok", space.name, len(ran), "tests", f"{counted.mflops:.2f} MFLOPs")
''')


def test_extending_example_is_real(tmp_path):
    import json

    blocks = code_blocks(EXTENDING_MD.read_text())
    wanted = {"dsearch/model/layers.py", "dsearch/model/ops/gdsc.py", "tests/model/test_gdsc.py", "grouped.yaml"}
    assert wanted <= set(blocks), f"docs/extending.md lacks titled blocks: {sorted(wanted - set(blocks))}"
    # A fresh interpreter: registering a conv type changes a process-wide registry.
    proc = subprocess.run([sys.executable, "-c", EXAMPLE_RUNNER, str(tmp_path / "grouped.yaml")],
                          input=json.dumps(blocks), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("ok grouped"), proc.stdout


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_page_is_in_the_nav(page):
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    assert re.search(rf"\b{re.escape(page)}\b", nav), f"docs/{page} is not in mkdocs.yml's nav"
