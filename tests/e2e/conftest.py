import sys
from pathlib import Path

# harness.py (the gateway-plus-upstream fixture) sits beside the end-to-end tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
