"""What identifies a training schedule: the key a kept result must match to be reused rather than trained again.

Each caller keeps results in its own stored form, which old studies and results files hold: `trained.N`
facts (settings under "config"), the baselines' proxy and full results (under "proxy") and the results
script's runs (the settings alone, without the seed). They are all built here, from one rule: the context
(dataset, training size, split seed) first, then every ProxyConfig setting, as they read back from JSON.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from .proxy import ProxyConfig


def settings_key(proxy: ProxyConfig, without: Iterable[str] = ()) -> dict[str, Any]:
    """Every setting of `proxy` but those named in `without`, as the dict reads back from JSON."""
    left_out = set(without)
    return json.loads(json.dumps({k: v for k, v in asdict(proxy).items() if k not in left_out}))


def schedule_key(proxy: ProxyConfig, under: str = "proxy", **context: Any) -> dict[str, Any]:
    """`context` (in the order given), then the settings of `proxy` under the key `under`, as JSON reads them back."""
    return json.loads(json.dumps({**context, under: settings_key(proxy)}))
