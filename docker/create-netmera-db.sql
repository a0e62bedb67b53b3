CREATE DATABASE netmera OWNER airflow;
