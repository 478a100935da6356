from stages.validate.suite import main

raise SystemExit(main())
