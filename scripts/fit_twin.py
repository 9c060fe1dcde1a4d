#!/usr/bin/env python
"""Fit the device twin to the measured Jetson data: ``python scripts/fit_twin.py [--check]``.

The fit lives in ``twins.fitting``; this command points it at ``../shared/data`` beside the
repository unless ``--data`` says otherwise.
"""

import sys
from pathlib import Path

from twins.fitting import main

if __name__ == "__main__":
    sys.exit(main(default_data=Path(__file__).resolve().parents[1].parent / "shared" / "data"))
