"""The command line, end to end in a subprocess."""
import json
import subprocess
import sys

from dsearch import spec_cost, preset, with_conv


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


def test_cost_bad_inputs_give_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**preset("resnet20").to_dict(), "num_classes": "ten"}))
    for args, needle in [
        (("cost", "nosuchnet"), "neither a preset"),
        (("cost", str(bad)), "num_classes: must be an integer"),
        (("cost", "resnet20", "--conv", "fancy"), "unknown conv kind 'fancy'"),
    ]:
        proc = run(*args)
        assert proc.returncode == 2
        assert needle in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert proc.stdout == ""
