"""The Airflow glue: Connections and pools, the refresh's step list the DAG calls, the webhook's
trigger and the deployment check. Nothing below this package imports Airflow."""
