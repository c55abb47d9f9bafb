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
