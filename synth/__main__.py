"""`python -m synth --help`: see synth/cli.py."""

import sys

from synth.cli import main

sys.exit(main())
