"""The Factory Sessions API emulator (``tests/emulators/factory.py``) under uvicorn on 127.0.0.1.

``python bench/servers/factory_emu.py PORT``; the API key is the emulator's ``API_KEY``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvicorn
from tests.emulators.factory import FactoryEmulator

if __name__ == "__main__":
    uvicorn.run(FactoryEmulator().app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                lifespan="off", access_log=False)  # fmt: skip
