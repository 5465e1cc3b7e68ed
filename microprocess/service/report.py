"""What a service that writes its own report imports to write it as the platform does.

The platform's reduce (`microprocess.reduce`) and a service's reduce (a job with
`reduce = "service"`, like the bundled `microservice`) share, through this front door:

* where the files go: `ReportLayout` (`reports/<job>/<run>/...`) and the tag that expires the
  intermediate part files (`PART_TAGGING`);
* how a cell is written: `cell` / `spreadsheet_safe` (a text starting with `=`, `+`, `-`, `@`,
  tab or CR gets a leading quote: CSV formula neutralisation) and `CsvEncoder` (RFC 4180 line
  ends), so a fix to the escaping reaches both reports;
* the failures file's columns: `failure_columns(job)`;
* the page: `report_page` (head, style, summary table, chart section, failures, files; every
  value escaped) and `facts_table`;
* S3 helpers: `S3StreamWriter` (multipart, bounded memory), `presign`, `is_missing`;
* the tasks never attempted of a stopped run: `write_not_attempted` (`not_attempted.csv`, with
  each task's item id);
* the email, once per run: `notify_once` (the ledger's notices claim, `EMAIL_LEASE_S`;
  `NoticesInFlight` while another finalize holds it) and `send_email`.

Unlike the rest of `microprocess.service`, this module needs boto3 (a report goes to S3).
"""

from microprocess.reduce.finalize import is_missing, presign
from microprocess.reduce.layout import PART_TAG_KEY, PART_TAG_VALUE, PART_TAGGING, ReportLayout
from microprocess.reduce.mail import EMAIL_LEASE_S, NoticesInFlight, notify_once, send_email
from microprocess.reduce.not_attempted import write_not_attempted
from microprocess.reduce.page import facts_table, report_page
from microprocess.reduce.parts import failure_columns
from microprocess.reduce.rows import CSV_LINE_END, CsvEncoder, cell, spreadsheet_safe
from microprocess.reduce.s3stream import S3StreamWriter

__all__ = [
    "CSV_LINE_END",
    "EMAIL_LEASE_S",
    "PART_TAGGING",
    "PART_TAG_KEY",
    "PART_TAG_VALUE",
    "CsvEncoder",
    "NoticesInFlight",
    "ReportLayout",
    "S3StreamWriter",
    "cell",
    "facts_table",
    "failure_columns",
    "is_missing",
    "notify_once",
    "presign",
    "report_page",
    "send_email",
    "spreadsheet_safe",
    "write_not_attempted",
]
