from stages.evaluate.cli import main

raise SystemExit(main())
