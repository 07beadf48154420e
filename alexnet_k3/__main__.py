from alexnet_k3.cli import main

raise SystemExit(main())
