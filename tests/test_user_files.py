"""A user's files, whatever their bytes: space YAML, ArchSpec JSON and metrics.json are read into one clear line or
a value, never a traceback, a hang or gigabytes of memory (issue 25)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TINY_SPACE

from dsearch import cli, preset
from dsearch.errors import DsearchError
from dsearch.paths import MAX_USER_FILE_BYTES
from dsearch.search.spaces import SPACES_DIR, SpaceError, load_space

TINY = textwrap.dedent(TINY_SPACE)
# Nine levels of nine aliases: 9**9 (387 million) values once expanded; PyYAML builds it shared, and printing or
# copying it expands it (the probe in issue 25 grew to about 4 GB before failing).
BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))


def one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and len(text) < 600, text
    return text


def space_error(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "space.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    text = one_line(err.value)
    assert text.startswith(f"{path}: "), text
    return text


def bomb_in_a_value(text: str) -> str:
    """`text` (a space file) with the bomb's anchors first and its top alias as the head's dropout."""
    return BOMB + text.replace("head: {width: 0}", "head: {width: 0, dropout: *a8}")


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    start = time.perf_counter()
    text = space_error(tmp_path, bomb_in_a_value(TINY))
    assert "aliases expand to more than 20000 values" in text
    assert time.perf_counter() - start < 2


def test_a_recursive_alias_is_refused(tmp_path):
    text = space_error(tmp_path, TINY.replace("head: {width: 0}", "head: &h {width: 0, dropout: [*h]}"))
    assert "recursive alias" in text and "(line " in text


@pytest.mark.parametrize("content,needle", [
    ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    (TINY.replace("resolution: 32", "resolution: 2024-02-30"), "a value cannot be read"),
    (TINY.replace("resolution: 32", "resolution: " + "9" * 5000), "a value cannot be read"),
    (TINY.replace("name: tiny", "name: tiny\n1: one\nnull: none"), "top level: unknown key(s) 1, None"),
    (TINY.replace("activation: relu,", "activation: [relu],"), "stages[0].activation: unknown activation"),
    (TINY.replace("name: tiny", "name: \"two\\nlines\""), "name: must be a non-empty string on one line"),
    (TINY.replace("depth: [1, 2]", "depth: [1, 1000000000]"), "stages[1].depth: choices must be integers from 1"),
    (TINY.replace("width: [16, 32]", "width: [16, 1e400]"), "stages[1].width: choices must be integers"),
    (TINY.replace("stride: 2}\n  - {width: [16", "stride: 2, expansion: .nan}\n  - {width: [16"),
     "stages[0].expansion: choices must be numbers > 0 and <= 64"),
    (TINY.replace("width: [8, 16]", "width: [" + ", ".join(map(str, range(1, 102))) + "]"),
     "stages[0].width: 101 choices; at most 100"),
    (TINY.replace("groups: [2, 4], overlap: [0.0, 0.5]", "groups: [" + ", ".join(map(str, range(1, 101))) + "], "
                  "overlap: [0.0, 0.25, 0.5, 0.75], with_bn: [true, false], dilation: [1, 2, 3], "
                  "activation: [null, relu]"),
     "conv_knobs.scc: its choices make 4800 knob settings"),
    (TINY.replace("stem: {width: 8, kernel: 3", "stem: {width: 8, kernel: 4"), "stem.kernel: kernel 4 is not one"),
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: [{width: 8, stride: 1}]\n---\nname: y\n",
     "expected a single document"),
    ("x: " + "y" * 100_000 + "\n" + "z: [" + "q" * 100_000 + "]\n", "top level: unknown key(s) x, z"),
])
def test_hostile_space_files_are_one_line(tmp_path, content, needle):
    assert needle in space_error(tmp_path, content)


def test_oversized_and_unreadable_space_files_are_one_line(tmp_path):
    big = TINY + "#" * MAX_USER_FILE_BYTES
    assert "larger than 1 MiB, too large for a space file" in space_error(tmp_path, big)
    assert "not UTF-8 text (byte 1)" in space_error(tmp_path, b"n\xffame: x\n")
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    assert load_space(str(tmp_path / "bom.yaml")).name == "tiny"  # a byte-order mark is not a problem


def test_the_alias_bomb_through_the_cli_is_one_line_in_little_memory(tmp_path):
    """`python -m dsearch spaces BOMB.yaml` in a fresh process: exit 2, one line, no traceback, and the process
    never holds more than a fraction of the 4 GB the bomb grew to before."""
    (tmp_path / "bomb.yaml").write_text(bomb_in_a_value(TINY))
    (tmp_path / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}

    def spaces(name: str) -> tuple[int, str, int]:
        """Exit status, stderr and peak memory (KiB) of `python -m dsearch spaces NAME` in a fresh process."""
        proc = subprocess.Popen([sys.executable, "-m", "dsearch", "spaces", name], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory (stderr fits the pipe)
        finally:
            proc.returncode = 0  # reaped: Popen must not wait again
        text = proc.stderr.read()
        proc.stderr.close()
        return os.waitstatus_to_exitcode(status), text, usage.ru_maxrss

    code, _, plain_rss = spaces("tiny.yaml")  # the same command on a good file: what importing torch etc. costs
    assert code == 0
    code, err, rss = spaces("bomb.yaml")
    assert code == 2, err
    assert err.startswith("dsearch spaces: error: bomb.yaml: invalid YAML: its aliases expand to more than"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert rss < plain_rss + 200_000  # KiB on Linux: refusing the file costs little beyond the imports, not 4 GB


# --- ArchSpec JSON and metrics.json -------------------------------------------------------------------------------

ARCH = preset("resnet20").to_json(indent=1)


def arch_error(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "arch.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(DsearchError) as err:
        cli.load_arch(str(path))
    text = one_line(err.value)
    assert text.startswith(f"{path}: "), text
    return text


@pytest.mark.parametrize("content,needle", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON: nested too deeply"),
    (ARCH.replace('"num_classes": 10', '"num_classes": ' + "9" * 5000), "not valid JSON: Exceeds the limit"),
    (ARCH.replace('"expansion": 1.0', '"expansion": 1e999', 1), "expansion: must be > 0 and <= 64"),
    (ARCH.replace('"expansion": 1.0', '"expansion": NaN', 1), "expansion: must be > 0 and <= 64"),
    (ARCH.replace('"repeats": 3', '"repeats": 1000000000', 1), "repeats: must be an integer from 1 to 256"),
    (ARCH.replace('"out_channels": 16', '"out_channels": 100000000000000000000', 1),
     "out_channels: must be an integer from 1 to 65536"),
    (ARCH.replace('"kind": "regular"', '"kind": "regular", "activation": ["relu"]', 1), "unknown knob(s) activation"),
    (ARCH.replace('"kind": "regular"', '"kind": "dsc", "activation": ["relu"]', 1),
     "dsc.activation=['relu']: unknown activation"),
    (ARCH.replace('"resolution": 32', '"resolution": 32, "' + "k" * 100_000 + '": 1'), "unknown field(s) kkkk"),
    (b'{"a": "\xff"}', "not UTF-8 text"),
    (ARCH + " " * MAX_USER_FILE_BYTES, "larger than 1 MiB, too large for an ArchSpec JSON file"),
])
def test_hostile_arch_files_are_one_line(tmp_path, content, needle):
    for part in ('"expansion": 1.0', '"repeats": 3', '"out_channels": 16', '"kind": "regular"', '"resolution": 32'):
        assert part in ARCH  # each case changes a real field
    assert needle in arch_error(tmp_path, content)


def test_a_damaged_metrics_file_is_one_line(tmp_path):
    path = tmp_path / "metrics.json"
    for content in (b"[" * 100_000, b'{"epochs": ' + b"9" * 5000 + b"}", b"\xff\xfe", b" " * (MAX_USER_FILE_BYTES + 1)):
        path.write_bytes(content)
        with pytest.raises(DsearchError) as err:
            cli._read_metrics(path)
        assert one_line(err.value).endswith("retrain with `dsearch train` to write it again")


# --- fuzzing: mutated and random bytes into every reader --------------------------------------------------------

YAML_TOKENS = ["&a ", "*a", "&b [*a, *a, *a]", "[", "]", "{", "}", ": ", "- ", "? ", ", ", "<<: *a", "!!binary ",
               "!!set ", "!!python/object/apply:os.system ['true']", "!!str ", "!!int ", "!!float ", "!!map ",
               "2024-02-30", "2024-01-01 10:00:00", "1e999", "-1e999", ".nan", ".inf", "-.inf", "0x" + "f" * 40,
               "9" * 5000, "0o777", "null", "~", "true", "no", "---\n", "...\n", "%YAML 1.1\n", "'", '"', "\\",
               "\t", "\n", "\n  ", "#", "|\n  ", ">\n  ", "\x00", "\ufeff", "\u2028", "é", "-1", "0", "1.5", "1000000"]
JSON_TOKENS = ["{", "}", "[", "]", ",", ":", '"', "\\u0000", "\\ud800", "NaN", "Infinity", "-Infinity", "1e999",
               "9" * 5000, "-0", "null", "true", "false", '"kind"', '"dsc"', '"scc"', '"groups"', "[]", "{}",
               '"schema"', "0.5", "1000000000", "\x00", "\xff"]


def mutate(rng: random.Random, seed: bytes, tokens: list[str]) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a token the format gives meaning to
            data[at:at] = rng.choice(tokens).encode("utf-8", "surrogatepass")
        elif op == 2:  # delete a span
            del data[at:at + rng.randint(1, 40)]
        elif op == 3 and data:  # repeat a span
            span = data[at:at + rng.randint(1, 60)]
            data[at:at] = span * rng.randint(1, 8)
        elif op == 4:  # random bytes
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        else:  # swap two lines
            lines = bytes(data).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def fuzz_cases(seeds: list[bytes], tokens: list[str], n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)  # deterministic: the same cases on every run
    cases = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))) for _ in range(n // 10)]
    return cases + [mutate(rng, rng.choice(seeds), tokens) for _ in range(n - len(cases))]


def only_one_line_errors(read, path: Path, cases: list[bytes]) -> int:
    """Feed each case to `read(path)`; anything but a value or a one-line DsearchError fails. Returns the errors."""
    errors = 0
    for case in cases:
        path.write_bytes(case)
        try:
            read(path)
        except DsearchError as err:
            errors += 1
            assert str(err) and "\n" not in str(err) and len(str(err)) < 600, (case, str(err))
        except Exception as err:  # noqa: BLE001 - the point: no other exception may escape
            raise AssertionError(f"{type(err).__name__}: {err} for {case!r}") from None
    return errors


def test_fuzzed_space_files_give_a_space_or_one_line(tmp_path, capfd):
    seeds = [TINY.encode(), (SPACES_DIR / "mobile.yaml").read_bytes(), (SPACES_DIR / "residual.yaml").read_bytes()]
    cases = fuzz_cases(seeds, YAML_TOKENS, 400, seed=25)
    errors = only_one_line_errors(lambda p: load_space(str(p)), tmp_path / "fuzz.yaml", cases)
    assert 0 < errors < len(cases)  # the mutations both break and keep files
    for case in cases[:40]:  # and through the CLI command: exit 0 with a table, or exit 2 with one line
        (tmp_path / "fuzz.yaml").write_bytes(case)
        code = cli.main(["spaces", str(tmp_path / "fuzz.yaml")])
        err = capfd.readouterr().err
        assert (code, err) == (0, "") or (code == 2 and len(err.strip().splitlines()) == 1), err


def test_fuzzed_arch_and_metrics_files_give_a_value_or_one_line(tmp_path):
    arch_seeds = [preset(name).to_json(indent=i).encode() for name, i in (("resnet20", 1), ("mobilenet_v2", None))]
    cases = fuzz_cases(arch_seeds, JSON_TOKENS, 300, seed=26)
    errors = only_one_line_errors(lambda p: cli.load_arch(str(p)), tmp_path / "fuzz.json", cases)
    assert 0 < errors < len(cases)
    metrics = json.dumps({"dataset": "embedded", "epochs": 10, "test_acc": 0.9, "train_resolution": 28}).encode()
    only_one_line_errors(cli._read_metrics, tmp_path / "metrics.json", fuzz_cases([metrics], JSON_TOKENS, 200, 27))
