from fastmetro.cli import main

raise SystemExit(main())
