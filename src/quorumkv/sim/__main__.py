import sys

from quorumkv.testing.sim_cli import main

sys.exit(main())
