# Build contexts the benchmarks share; source this file, then call the functions.

# ten_context DIR BASE: the 10-step case, FROM BASE: COPY and RUN steps over a few small files.
ten_context() {
  local dir=$1 base=$2
  mkdir -p "$dir/src"
  echo "a file" >"$dir/a.txt"
  for i in $(seq 1 20); do echo "source $i" >"$dir/src/f$i.txt"; done
  echo "last 0" >"$dir/last.txt"
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $base
ENV APP=bench
WORKDIR /app
COPY a.txt /app/a.txt
COPY src/ /app/src/
RUN echo one > /one
RUN echo two > /two
RUN cat /app/a.txt > /three
RUN ls /app/src > /four
COPY last.txt /app/last.txt
CMD ["sh"]
DOCKERFILE
}

# big_data DIR: 20,000 files of 10 kB of random data (200 MB) in 200 directories under DIR.
big_data() {
  python3 - "$1" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(200):
    p = os.path.join(root, f"d{d:03}")
    os.makedirs(p)
    for f in range(100):
        with open(os.path.join(p, f"f{f:03}.bin"), "wb") as fh:
            fh.write(os.urandom(10000))
PY
}

# debian_python_tar FILE: a Debian 12 minbase root with python3, pip and ca-certificates, made by mmdebstrap once
# and kept at FILE for later runs (the first time downloads about 40 MB from deb.debian.org).
debian_python_tar() {
  local tar=$1
  [ -s "$tar" ] && return 0
  mkdir -p "$(dirname "$tar")"
  mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-pip,ca-certificates bookworm \
    "$tar.part" http://deb.debian.org/debian
  mv "$tar.part" "$tar"
}

# app_context DIR BASE: a small Flask app the way people build one: pinned requirements installed with pip through
# a cache mount (the TLS CA bundle as the build secret `ca`), a dependency layer, then a source layer.
app_context() {
  local dir=$1 base=$2
  mkdir -p "$dir/app"
  printf '%s\n' flask==3.0.3 requests==2.32.3 click==8.1.7 attrs==24.2.0 >"$dir/requirements.txt"
  cat >"$dir/app/main.py" <<'PY'
import flask, requests

app = flask.Flask(__name__)
GREETING = "hello 0"


@app.get("/")
def index():
    return {"greeting": GREETING, "requests": requests.__version__}


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8000)
PY
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $base
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca,target=/run/secrets/ca \\
    pip install --cert /run/secrets/ca -r requirements.txt
COPY app/ /app/
RUN python3 -m compileall -q /app && python3 -c "import flask, requests, click, attrs"
CMD ["python3", "/app/main.py"]
DOCKERFILE
}
