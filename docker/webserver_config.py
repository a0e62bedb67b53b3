"""FAB's configuration for the Airflow API server (Dockerfile: /opt/airflow/webserver_config.py,
read through `[fab] config_file`). Users and roles are in Airflow's metadata DB (AUTH_DB); to
log in through the company's directory or identity provider instead, set AUTH_TYPE and the
block of your choice below (docs/production.md, "Logins: LDAP or OAuth"), rebuild the image,
and map the directory's groups to the roles that segments' `access` names (AUTH_ROLES_MAPPING),
so that a team's members get their segments at their first login. Secrets come from the
environment, never from this file.
"""

from __future__ import annotations

import os  # noqa: F401 (the commented blocks read their secrets from the environment)

from flask_appbuilder.const import AUTH_DB

AUTH_TYPE = AUTH_DB
# A user who logs in for the first time through LDAP or OAuth gets this role unless a mapping
# gives others: Public sees nothing (it is not one of the roles `access` may name).
AUTH_USER_REGISTRATION = False
AUTH_USER_REGISTRATION_ROLE = "Public"

# --- LDAP (needs python-ldap: in the official image) ---------------------------------------
# from flask_appbuilder.const import AUTH_LDAP
# AUTH_TYPE = AUTH_LDAP
# AUTH_LDAP_SERVER = "ldaps://ldap.example.com:636"
# AUTH_LDAP_SEARCH = "ou=people,dc=example,dc=com"
# AUTH_LDAP_UID_FIELD = "uid"
# AUTH_LDAP_BIND_USER = "cn=airflow,ou=services,dc=example,dc=com"
# AUTH_LDAP_BIND_PASSWORD = os.environ["AIRFLOW_LDAP_BIND_PASSWORD"]
# AUTH_LDAP_GROUP_FIELD = "memberOf"
# AUTH_USER_REGISTRATION = True
# AUTH_ROLES_SYNC_AT_LOGIN = True
# AUTH_ROLES_MAPPING = {
#     "cn=crm-marketers,ou=groups,dc=example,dc=com": ["crm-marketers"],
#     "cn=analysts,ou=groups,dc=example,dc=com": ["analysts"],
#     "cn=data-platform,ou=groups,dc=example,dc=com": ["Admin"],
# }

# --- OAuth (e.g. an OpenID Connect provider) -----------------------------------------------
# from flask_appbuilder.const import AUTH_OAUTH
# AUTH_TYPE = AUTH_OAUTH
# OAUTH_PROVIDERS = [
#     {
#         "name": "keycloak",
#         "icon": "fa-key",
#         "token_key": "access_token",
#         "remote_app": {
#             "client_id": os.environ["AIRFLOW_OAUTH_CLIENT_ID"],
#             "client_secret": os.environ["AIRFLOW_OAUTH_CLIENT_SECRET"],
#             "server_metadata_url": "https://sso.example.com/realms/company/.well-known/openid-configuration",
#             "client_kwargs": {"scope": "openid email profile groups"},
#         },
#     }
# ]
# AUTH_USER_REGISTRATION = True
# AUTH_ROLES_SYNC_AT_LOGIN = True
# AUTH_ROLES_MAPPING = {"crm-marketers": ["crm-marketers"], "analysts": ["analysts"]}
