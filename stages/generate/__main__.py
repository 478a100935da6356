from stages.generate.cli import main

raise SystemExit(main())
