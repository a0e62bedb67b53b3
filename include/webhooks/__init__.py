"""Push sources: HTTP endpoints served by the Airflow API server through the plugin.

`app` builds the FastAPI app, `payload` validates Mixpanel's cohort-sync calls, `auth` checks
Basic credentials against the segment's Airflow Connection, `state` stages pages durably in the
segment store, `trigger` queues the segment's DAG when an export is complete, and `logsafe`
escapes outside text (a caller's, a driver's) before it reaches a log line or a run note.
"""
