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


# --- a study's own records (issue 32): a damaged verdict, plan, rung record or stored settings ---------------------

BROKEN_VERDICTS = {  # the four edits of issue 32, each a traceback before: JSONDecodeError, KeyError, TypeError, ...
    "not JSON": None,  # written into the database as text that does not parse
    "an empty object": {},
    "rows set to null": {"rows": None},
    "the pick set to a string": {"pick": "trial 2"},
}


def _set_raw(url: str, key: str, text: str) -> None:
    """Write `text` as the stored JSON of study user attr `key`, as an edit of the database would."""
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        assert db.execute("UPDATE study_user_attributes SET value_json = ? WHERE key = ?", (text, key)).rowcount == 1


@pytest.fixture
def verdict_study(searched_study, tmp_path):
    """A copy of the searched study with a verdict made by `make_verdict` over its trained trials (no training)."""
    import shutil

    import optuna

    from dsearch.analysis.pareto import trained, trials_frame
    from dsearch.analysis.verdict import VERDICT_ATTR, Finalist, make_verdict
    from dsearch.search.resume import plain

    root = tmp_path / "study"
    shutil.copytree(searched_study["root"], root)
    url = f"sqlite:///{root}/study.db"
    study = optuna.load_study(study_name=searched_study["name"], storage=url)
    done = trained(trials_frame(study)).sort_values("trial")
    assert len(done) >= 2
    finalists = [Finalist(f"trial {int(r.trial)}", int(r.trial), r.arch, float(r.mflops), float(r.mparams), True,
                          (0.5 + 0.1 * i, 0.52 + 0.1 * i), (0.5 + 0.1 * i, 0.5 + 0.1 * i))
                 for i, r in enumerate(done.itertuples())]
    verdict = plain(make_verdict(finalists, None, 32, [1, 2]))
    study.set_user_attr(VERDICT_ATTR, verdict)
    return {"name": searched_study["name"], "url": url, "root": root, "verdict": verdict, "study": study}


def _break_verdict(case: str, verdict_study) -> None:
    from dsearch.analysis.verdict import VERDICT_ATTR

    edit = BROKEN_VERDICTS[case]
    text = '{"rows": [' if edit is None else json.dumps(edit if not edit else {**verdict_study["verdict"], **edit})
    _set_raw(verdict_study["url"], VERDICT_ATTR, text)


def test_a_readable_verdict_is_shown_and_picked(verdict_study, capfd, tmp_path):
    name, url, pick = verdict_study["name"], verdict_study["url"], verdict_study["verdict"]["pick"]
    code = cli.main(["show", name, "--storage", url])
    out, err = capfd.readouterr()
    assert code == 0 and err == "" and "verdict: full-schedule training" in out, err
    code = cli.main(["export", name, "--storage", url, "--trial", "best", "--out", str(tmp_path / "x")])
    out, err = capfd.readouterr()
    assert code == 0 and f"trial {pick}" in out.splitlines()[0], (out, err)


@pytest.mark.parametrize("case", list(BROKEN_VERDICTS))
def test_a_damaged_verdict_reads_as_one_line_and_the_trials_still_show(case, verdict_study, capfd, tmp_path):
    from dsearch.export import load_trial

    _break_verdict(case, verdict_study)
    name, url = verdict_study["name"], verdict_study["url"]
    code = cli.main(["show", name, "--storage", url])
    out, err = capfd.readouterr()
    assert code == 0 and "Pareto-optimal trials" in out and "verdict: full-schedule" not in out, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"study '{name}'" in err and "dsearch_verdict" in err and "rerun the finals with `dsearch run`" in err
    page = tmp_path / "d.html"
    code = cli.main(["dashboard", name, "--storage", url, "--out", str(page)])
    out, err = capfd.readouterr()
    assert code == 0 and page.is_file() and "dsearch_verdict" in page.read_text(), (out, err)
    code = cli.main(["export", name, "--storage", url, "--trial", "best", "--out", str(tmp_path / "x")])
    out, err = capfd.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dsearch_verdict" in err and "--trial N" in err, err
    assert not (tmp_path / "x").exists()
    code = cli.main(["export", name, "--storage", url, "--trial", "0", "--out", str(tmp_path / "y")])
    assert code == 0, capfd.readouterr()
    with pytest.raises(DsearchError) as caught:
        load_trial(name, "best", storage=url)
    assert "dsearch_verdict" in one_line(caught.value)


def test_the_finals_replan_over_a_damaged_plan_and_retrain_a_damaged_rung_record(verdict_study):
    from dsearch.analysis.finals import pending_finals, stored_plan
    from dsearch.analysis.verdict import record_key, rung_reached
    from dsearch.search.record import CONFIG_ATTR, PLAN_ATTR

    study = verdict_study["study"]
    plan = {"id": "p1", "trials": [0, 1], "seed": 1, "config": {"eta": 3, "proxy_seeds": 3, "seeds": 3}}
    study.set_user_attr(PLAN_ATTR, plan)
    assert stored_plan(study) == plan and pending_finals(study, study.user_attrs[CONFIG_ATTR]) == plan
    for bad in ({**plan, "trials": None}, {**plan, "seed": "1"}, {**plan, "config": {"eta": "x"}}, [plan]):
        study.set_user_attr(PLAN_ATTR, bad)
        assert stored_plan(study) is None and pending_finals(study, study.user_attrs[CONFIG_ATTR]) is None
    good = {"rung": 1, "status": "complete", "val_acc": 0.5, "test_acc": 0.5, "train_time_s": 1.0,
            "train_resolution": 28, "config": {}}
    study.set_user_attr(record_key(1, "trial0", 2), good)
    study.set_user_attr(record_key(2, "trial0", 2), {**good, "val_acc": None})  # damaged: not counted
    assert rung_reached(study) == {0: 1}


STUDY_RECORD_TOKENS = JSON_TOKENS + ['"rows"', '"pick"', '"trials"', '"seed"', '"status"', '"complete"',
                                     '"budget_mflops"', '"resolution"', '"proxy"', "-1", "0", "2.5", '"x"']


def test_fuzzed_study_records_give_a_result_or_one_line(verdict_study, capfd):
    """Every record show, dashboard, export and load_trial read, mutated: a value or one DsearchError line."""
    from dsearch.analysis.baselines import comparison_lines
    from dsearch.analysis.dashboard import build_dashboard
    from dsearch.analysis.finals import pending_finals, stored_plan
    from dsearch.analysis.pareto import arch_of, best_within_budget, trials_frame
    from dsearch.analysis.pick import pick_trial
    from dsearch.analysis.verdict import record_key, rung_record_problem, study_verdict, verdict_lines
    from dsearch.search.record import (
        CONFIG_ATTR,
        DATA_ATTR,
        IDENTITY_ATTR,
        PLAN_ATTR,
        TRAINED_PREFIX,
        VERDICT_ATTR,
        stored_settings,
        study_budget,
        study_data_facts,
    )
    from dsearch.search.storage import open_study
    from dsearch.search.weights import trial_weights

    name, url, study = verdict_study["name"], verdict_study["url"], verdict_study["study"]
    rung = record_key(2, "trial0", 1)
    study.set_user_attr(PLAN_ATTR, {"id": "p1", "trials": [0, 1], "seed": 1, "config": {"eta": 3}})
    study.set_user_attr(rung, {"rung": 2, "status": "complete", "val_acc": 0.5, "test_acc": 0.5,
                               "train_time_s": 1.0, "train_resolution": 28, "config": {}})
    pick = verdict_study["verdict"]["pick"]
    proxy_weights = study.get_trials(deepcopy=False)[pick].user_attrs["weights_artifact"]
    study.set_user_attr(f"{TRAINED_PREFIX}{pick}", {"weights_artifact": proxy_weights, "epochs": 1, "test_acc": 0.5,
                                                     "dataset": "fashion-mnist-embedded", "train_resolution": 28})
    originals = {key: json.dumps(study.user_attrs[key]) for key in
                 (VERDICT_ATTR, PLAN_ATTR, rung, CONFIG_ATTR, IDENTITY_ATTR, DATA_ATTR, f"{TRAINED_PREFIX}{pick}")}

    errors: dict[str, int] = dict.fromkeys(originals, 0)
    # The finals' own records are never an error: a damaged plan or rung record is planned or trained again.
    dropped = {PLAN_ATTR: lambda s: stored_plan(s) is None,
               rung: lambda s: rung_record_problem(s.user_attrs.get(rung)) is not None}

    def read_all() -> None:
        opened, _ = open_study(name, url, read_only=True)
        frame = trials_frame(opened)
        comparison_lines(opened, frame)
        pending_finals(opened, stored_settings(opened, CONFIG_ATTR))
        verdict = study_verdict(opened)
        if verdict is not None:
            verdict_lines(verdict)
        number = pick_trial(opened, "best")
        # 'best' is what the records say: the readable verdict's pick, else the best proxy trial within the budget
        assert number == (verdict["pick"] if verdict is not None else
                          int(best_within_budget(frame, study_budget(opened))["trial"]))
        arch_of(opened, number)
        study_data_facts(opened)
        found = trial_weights(opened, number, url)  # what export and load_trial read next
        if found is not None:
            cli._study_weights_facts(opened, number, found[1])

    read_all()  # the records as written read cleanly, the finals' own among them
    unmutated = open_study(name, url, read_only=True)[0]
    assert not any(check(unmutated) for check in dropped.values())
    rng = random.Random(32)  # deterministic: the same cases on every run
    for key, text in originals.items():
        for i, case in enumerate([mutate(rng, text.encode(), STUDY_RECORD_TOKENS) for _ in range(40)]):
            _set_raw(url, key, case.decode("utf-8", "replace"))
            try:
                read_all()
                if i < 3:  # the whole page, for a few cases per record (each takes a second)
                    build_dashboard(open_study(name, url, read_only=True)[0])
                if key in dropped and dropped[key](open_study(name, url, read_only=True)[0]):
                    errors[key] += 1
            except DsearchError as err:
                assert key not in dropped, (key, case, str(err))
                errors[key] += 1
                assert str(err) and "\n" not in str(err) and len(str(err)) < 600, (key, case, str(err))
            except Exception as err:  # noqa: BLE001 - the point: no other exception may escape
                raise AssertionError(f"{type(err).__name__}: {err} for {key} = {case!r}") from None
            if i < 2:  # and through the CLI: exit 0, or exit 2 with one line
                code = cli.main(["show", name, "--storage", url])
                err_text = capfd.readouterr().err
                assert code in (0, 2) and len(err_text.strip().splitlines()) <= 1, err_text
        _set_raw(url, key, text)
    assert all(n > 0 for n in errors.values()) and sum(errors.values()) < 40 * len(errors), errors
