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

# The logs volume's mount point: a new volume takes the owner (airflow) of the folder it is
# mounted on. Staging is a bucket (CONNECTOR_SEGMENTS_STAGING_DIR), no folder of the image.
RUN mkdir -p /opt/airflow/logs
