"""People who use the console and the review API: accounts with a role, passwords stored as
argon2id hashes, the login limiter (`accounts`), their table in the review database
(`store`), and `funnel users` (`cli`)."""
