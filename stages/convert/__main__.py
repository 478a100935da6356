from stages.convert.cli import main

raise SystemExit(main())
