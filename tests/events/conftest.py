import sys
from pathlib import Path

# builders.py (catalog models shared by the tests here) sits beside them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
