import sys
from pathlib import Path

# scripts/ holds the fault-injecting upstream that the end-to-end tests and the benchmark share.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
