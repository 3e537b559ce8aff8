"""Roles made by end-to-end tests."""


def drop_roles(db, roles):
    """Drops `roles` and whatever they own or were granted, if they exist."""
    for role in roles:
        if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            db.execute(f"DROP OWNED BY {role} CASCADE")
            db.execute(f"DROP ROLE {role}")
