import os
import sys

# The oracles in helpers_prefix.py are imported by name from the test modules of this folder.
sys.path.insert(0, os.path.dirname(__file__))
