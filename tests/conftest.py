import textwrap
from pathlib import Path

import pytest

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


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY_SPACE))
    return path
