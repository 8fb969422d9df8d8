"""Storage: SQLAlchemy 2 models and the engine/session factory (SQLite WAL or PostgreSQL)."""

from fleet_server.db import console_models as _console_models  # noqa: F401  (registers tables)
from fleet_server.db import group_models as _group_models  # noqa: F401  (registers tables)
from fleet_server.db import rollout_models as _rollout_models  # noqa: F401  (registers tables)
from fleet_server.db import sbom_models as _sbom_models  # noqa: F401  (registers tables)
from fleet_server.db import ticket_models as _ticket_models  # noqa: F401  (registers tables)
from fleet_server.db import webhook_models as _webhook_models  # noqa: F401  (registers tables)
from fleet_server.db.engine import create_db_engine, make_session_factory, normalise_url
from fleet_server.db.models import Base

__all__ = ["Base", "create_db_engine", "make_session_factory", "normalise_url"]
