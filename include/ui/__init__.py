"""The Connector Segments app inside the Airflow UI: its JSON API (and, later, its page)."""
