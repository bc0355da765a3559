"""``python -m bytecheckpoint.cli``: the same as the ``bytecheckpoint`` console script."""

from . import main

main()
