from repulse.cli import main

raise SystemExit(main())
