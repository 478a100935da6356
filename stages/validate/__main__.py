from stages.validate.cli import main

raise SystemExit(main())
