from stages.prepare.conversion import main

raise SystemExit(main())
