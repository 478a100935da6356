from stages.prepare.cli import main

raise SystemExit(main())
