from stages.export.cli import main

raise SystemExit(main())
