"""`python -m dwbench` is the `dwbench` command."""

from dwbench.cli import main

raise SystemExit(main())
