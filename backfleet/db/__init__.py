"""The checkpoint database: models, sessions and the named checkpoint queries."""
