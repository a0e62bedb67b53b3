# The production image: Airflow's official image extended with this project, built once
# (`docker compose build`) instead of installing packages at every container start through
# _PIP_ADDITIONAL_REQUIREMENTS. Airflow's docs ("Building the image") show this shape.
FROM apache/airflow:3.3.2-python3.11

# apache-airflow pinned beside the requirements so that no requirement can move Airflow itself.
# requirements.txt holds the product's pins only (the venv adds requirements-dev.txt's tools).
COPY requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/airflow/requirements.txt

# The project, owned by root: the service user (airflow) can read it, not change it.
COPY dags/ /opt/airflow/dags/
COPY plugins/ /opt/airflow/plugins/
COPY include/ /opt/airflow/include/
COPY docker/create_admin.py /opt/airflow/docker/create_admin.py
# FAB's logins ([fab] config_file's default place): the metadata DB, or LDAP/OAuth set up there.
COPY docker/webserver_config.py /opt/airflow/webserver_config.py
ENV PYTHONPATH=/opt/airflow

# Mount points of the compose file's named volumes (staging: CONNECTOR_SEGMENTS_STAGING_DIR there):
# a new volume takes the owner (airflow) and mode of the folder it is mounted on, so staged
# audiences are the service user's alone.
RUN mkdir -p -m 0700 /opt/airflow/staging && mkdir -p /opt/airflow/logs
