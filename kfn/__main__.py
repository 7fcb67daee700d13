"""`python -m kfn`: the same as the `kfn` command."""
import sys

from kfn.cli import main

sys.exit(main())
