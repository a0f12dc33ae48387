"""`python -m services.media.xdp [--out PATH]`: build the relay's BPF object (see build.py)."""

from services.media.xdp.build import main

raise SystemExit(main())
