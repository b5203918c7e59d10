from taxi.cli import main

raise SystemExit(main())
