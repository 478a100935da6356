from stages.spectra.cli import main

raise SystemExit(main())
