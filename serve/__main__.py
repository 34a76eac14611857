"""`python -m serve ...` is `funnel ...` (used to start Triton as a child process)."""

from serve.cli import main

main()
