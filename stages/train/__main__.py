from stages.train.cli import main

raise SystemExit(main())
