import sys
from pathlib import Path

# The tests share helpers in `_models.py`; with --import-mode=importlib the folder is not on the path.
sys.path.insert(0, str(Path(__file__).parent))
