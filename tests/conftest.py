import os
import tempfile
import textwrap
from pathlib import Path

import pytest

from dsearch import cli

TINY_SPACE = """
name: tiny
description: two small stages, for tests
resolution: 32
stem: {width: 8, kernel: 3, stride: 1, activation: relu}
head: {width: 0}
stage_defaults: {block: separable, activation: relu, kernel: [3, 5], conv: [regular, dsc, bsconv_u, scc]}
stages:
  - {width: [8, 16], depth: 1, stride: 2}
  - {width: [16, 32], depth: [1, 2], stride: 2}
conv_knobs:
  scc: {groups: [2, 4], overlap: [0.0, 0.5]}
"""


def pytest_configure(config):
    """Latency tables and the timing lock in a folder of the test run's own (children inherit it), never the
    user's cache."""
    folder = tempfile.mkdtemp(prefix="dsearch-tests-")
    os.environ.setdefault("DSEARCH_LATENCY_DIR", os.path.join(folder, "latency"))
    os.environ.setdefault("DSEARCH_LOCK_DIR", folder)


def dsearch(capfd, *args):
    """`dsearch ARGS` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def one_line_error(code, err, needle):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY_SPACE))
    return path


@pytest.fixture(scope="session")
def searched_study(tmp_path_factory) -> dict:
    """A real, finished search on the tiny space (3 trained trials with kept weights and latencies)."""
    from dsearch.search.config import SearchConfig
    from dsearch.search.driver import run_search
    from dsearch.training.proxy import ProxyConfig

    root = tmp_path_factory.mktemp("searched")
    space = root / "tiny.yaml"
    space.write_text(textwrap.dedent(TINY_SPACE))
    url = f"sqlite:///{root}/study.db"
    cfg = SearchConfig(space=str(space), budget_mflops=0.22, seed=1, measure_latency=True,
                       proxy=ProxyConfig(epochs=1, batch_size=64, train_subset=512, augment=False))
    summary = run_search(cfg, "searched", url, n_trials=3, log=lambda _msg: None)
    return {"name": "searched", "storage": url, "root": root, "study": summary.study, "budget": 0.22}


# An exported model.py run in a fresh interpreter where `import dsearch` fails, from the export folder: its outputs
# for x.pt, its MACs (fvcore) and params, as JSON.
STANDALONE = textwrap.dedent("""
    import importlib.util, json, sys, warnings
    sys.modules["dsearch"] = None  # any import of dsearch now raises ImportError
    import torch
    spec = importlib.util.spec_from_file_location("model", "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.build_model()
    net.load_state_dict(torch.load("weights.pt", weights_only=True))
    net.eval()
    x = torch.load("x.pt", weights_only=True)
    with torch.no_grad():
        torch.save(net(x), "y.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
        flops = FlopCountAnalysis(net, x[:1]).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        macs = flops.total()
    print(json.dumps({"macs": macs, "params": sum(p.numel() for p in net.parameters()),
                      "dsearch_loaded": any(m.startswith("dsearch") for m in sys.modules if sys.modules[m])}))
""")
