"""The service's collector thresholds (service/gctune.py)."""

from __future__ import annotations

import gc

from service.runtime import gctune


def test_tune_sets_the_young_threshold_far_above_the_default() -> None:
    before = gc.get_threshold()
    try:
        gctune.tune()
        assert gc.get_threshold() == gctune.THRESHOLDS
        assert gc.get_threshold()[0] >= 10_000 > before[0] or before == gctune.THRESHOLDS
        assert gc.isenabled()  # tuned, never switched off: cycles are still found
    finally:
        gc.set_threshold(*before)
