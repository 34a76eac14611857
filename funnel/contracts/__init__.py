"""Contracts: the names and shapes that training, serving and monitoring share, in modules
that import no framework (no torch, Ray, FastAPI or Triton) and nothing of the rest of
Funnel. Everything else imports them; they import nothing back (the `lint-imports`
contracts in pyproject.toml)."""
