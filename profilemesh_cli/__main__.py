"""`python -m profilemesh_cli`, the same as the `profilemesh` command."""

import sys

from profilemesh_cli.main import main

sys.exit(main())
