import sys
from pathlib import Path

# tests import small helper modules that live next to them
sys.path.insert(0, str(Path(__file__).parent))
