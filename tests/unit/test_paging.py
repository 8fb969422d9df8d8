"""The one paging helper: a window cut in SQL, the total of the whole list, the next offset."""

from __future__ import annotations

from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fleet_server.services.paging import PageParams, fetch_page


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def test_pages_walk_the_whole_list_once() -> None:
    engine = create_engine("sqlite://")
    _Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(_Row(id=i, name=f"n{i}") for i in range(1, 8))
        session.commit()
        query = select(_Row).where(_Row.id > 1).order_by(_Row.id.desc())
        seen: list[int] = []
        offset: int | None = 0
        while offset is not None:
            page = fetch_page(session, query, PageParams(limit=4, offset=offset), scalars=True)
            assert page.total == 6
            seen += page.map(lambda r: r.id).items
            offset = page.next_offset
        assert seen == [7, 6, 5, 4, 3, 2]
        rows = fetch_page(session, select(_Row.id, _Row.name).order_by(_Row.id), PageParams(2, 6))
        assert ([tuple(r) for r in rows.items], rows.next_offset) == ([(7, "n7")], None)
