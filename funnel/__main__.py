"""`python -m funnel ...` is `funnel ...`."""

from funnel.cli import main

main()
