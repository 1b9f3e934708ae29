"""One ComponentResource per concern: server, database and roles, migrations, scheduled job."""
