"""The DynamoDB source reads several pages per Scan call and still gives the pages and cursors of
one Scan per page: same items, same cursors (DynamoDB's LastEvaluatedKey), resumable anywhere."""

from __future__ import annotations

from typing import Any

import pytest

from microprocess.ledger import CURSOR_DONE
from microprocess.pipeline.sources import DynamoDBSource, Page


def table(ddb: Any, name: str, *, range_key: bool) -> str:
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attrs = [{"AttributeName": "pk", "AttributeType": "S"}]
    if range_key:
        keys.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attrs.append({"AttributeName": "sk", "AttributeType": "N"})
    ddb.create_table(TableName=name, KeySchema=keys, AttributeDefinitions=attrs, BillingMode="PAY_PER_REQUEST")
    for start in range(0, 103, 25):
        ddb.batch_write_item(
            RequestItems={
                name: [
                    {"PutRequest": {"Item": {"pk": {"S": f"P{i % 40:03d}"}, "sk": {"N": str(i)}, "v": {"N": str(i)}}}}
                    if range_key
                    else {"PutRequest": {"Item": {"pk": {"S": f"P{i:04d}"}, "v": {"N": str(i)}}}}
                    for i in range(start, min(start + 25, 103))
                ]
            }
        )
    return name


def pages(source: DynamoDBSource, segment: int, limit: int, cursor: str = "") -> list[Page]:
    out = []
    while cursor != CURSOR_DONE:
        page = source.read_page(segment, cursor, limit)
        out.append(page)
        cursor = page.next_cursor
    return out


@pytest.mark.parametrize("range_key", [False, True], ids=["hash key", "hash and range key"])
@pytest.mark.parametrize("segments", [1, 3])
def test_read_ahead_gives_the_pages_and_cursors_of_one_scan_per_page(ddb: Any, range_key: bool, segments: int) -> None:
    name = table(ddb, "source-table", range_key=range_key)
    for segment in range(segments):
        # GIVEN the pages of one Scan per page (what DynamoDB's LastEvaluatedKey gives)
        plain = DynamoDBSource(client=ddb, table_name=name, segments=segments, read_ahead=1)
        expected = pages(plain, segment, 7)
        # WHEN the same segment is read 4 pages per Scan
        ahead = DynamoDBSource(client=ddb, table_name=name, segments=segments, read_ahead=4)
        got = pages(ahead, segment, 7)
        # THEN the pages, their items and their cursors are the same, in fewer calls
        assert got == expected
        assert all(len(p.items) <= 7 for p in got)
        assert plain.scans == len(expected)
        # (the first page names the key attributes; then one call per 4 pages, and a last one
        # that finds the segment's end when its items fill the call exactly)
        assert ahead.scans <= 1 + -(-(len(expected) - 1) // 4) + 1 < plain.scans
    total = sum(
        len(p.items)
        for s in range(segments)
        for p in pages(DynamoDBSource(client=ddb, table_name=name, segments=segments), s, 7)
    )
    assert total == 103


def test_a_read_ahead_source_resumes_from_any_cursor_of_its_pages(ddb: Any) -> None:
    name = table(ddb, "source-table", range_key=True)
    first = pages(DynamoDBSource(client=ddb, table_name=name, segments=1, read_ahead=4), 0, 5)
    # WHEN a new invocation (no pages in memory) resumes from a cursor that was read ahead
    middle = first[6].next_cursor  # a page served from memory, not a Scan's own LastEvaluatedKey
    resumed = pages(DynamoDBSource(client=ddb, table_name=name, segments=1, read_ahead=4), 0, 5, cursor=middle)
    # THEN it reads exactly the rest, with the same pages
    assert resumed == first[7:]


def test_a_cursor_from_another_chain_is_read_not_served_from_memory(ddb: Any) -> None:
    name = table(ddb, "source-table", range_key=False)
    source = DynamoDBSource(client=ddb, table_name=name, segments=1, read_ahead=4)
    first = source.read_page(0, "", 10)
    second = source.read_page(0, first.next_cursor, 10)  # reads 4 pages, serves the first
    # WHEN the splitter asks for a cursor it had earlier (another splitter moved the segment on,
    # or the page is re-read): the source reads it again rather than hand out a stale chain
    again = source.read_page(0, first.next_cursor, 10)
    assert again == second
    assert source.scans == 3
