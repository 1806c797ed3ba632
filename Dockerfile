FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
# Workers, the API, the watch daemon and the rest run as an unprivileged user: a stage that
# goes wrong cannot touch what root owns. /data (CARINA_DATA_ROOT) must be writable by it.
RUN useradd --system --uid 10001 --create-home carina && mkdir /redis-data && chown carina /redis-data
USER carina
