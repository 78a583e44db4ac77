FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends nodejs && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home hub
WORKDIR /app
# .dockerignore keeps .env, var/ (database, secret key), .venv and .git out of the image.
COPY . .
RUN pip install --no-cache-dir . && mkdir /data && chown hub /data
USER hub
EXPOSE 8000
