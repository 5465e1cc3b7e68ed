"""Run control: find any item of a run, pause and resume a run, scale a job mid-run, back
off by itself (adaptive concurrency), and stop a run that can no longer succeed.

* `lookup`: one task by task id or item id (O(1) reads), tasks by state, not-attempted tasks.
* `tolerance`: the one decision of when a run cannot succeed any more.
* `stop`: ends such a run FAILED at once (`stop_early`).
* `pause`: pause (park the run's messages in the ledger, stop its splitter) and resume.
* `scale`: read and set a job's event-source concurrency cap.
* `adaptive`: the AIMD controller of a job's effective concurrency.
* `scheduled`: that controller every minute, by itself, for the jobs declared `adaptive = true`.
"""
