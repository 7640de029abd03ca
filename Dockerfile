# The erpmail image: Airflow 3.3 on Python 3.11, erpmail's requirements, the libraries WeasyPrint
# loads, and the repository laid out under /opt/erpmail as erpmail expects it (sql/ and
# include/templates/ beside plugins/). docker-compose.yaml mounts the same folders over it.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

USER root
# Pango and HarfBuzz's subsetter for WeasyPrint's PDFs, a font for the letters, and openssl for
# the development mailbox's certificate (deploy/dovecot/make-tls.sh).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core openssl \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

USER airflow
# Naming the image's Airflow version makes pip fail rather than replace Airflow if
# requirements.txt ever pinned another one.
COPY --chown=airflow:0 requirements.txt /opt/erpmail/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/erpmail/requirements.txt

COPY --chown=airflow:0 pyproject.toml /opt/erpmail/pyproject.toml
COPY --chown=airflow:0 plugins /opt/erpmail/plugins
COPY --chown=airflow:0 dags /opt/erpmail/dags
COPY --chown=airflow:0 include /opt/erpmail/include
COPY --chown=airflow:0 sql /opt/erpmail/sql
COPY --chown=airflow:0 deploy /opt/erpmail/deploy
# Editable, so the package stays at /opt/erpmail/plugins (where erpmail finds sql/ and the
# templates) and a mounted plugins/ replaces it; it gives every process the `erpmail` command.
RUN pip install --no-cache-dir --no-deps -e /opt/erpmail

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/erpmail/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/erpmail/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=false
