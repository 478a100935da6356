from stages.demo_data.cli import main

raise SystemExit(main())
