"""End-to-end tests of `responder deliver` under a private Postfix and Dovecot's Sieve tools."""
