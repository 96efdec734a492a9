# Sourced by the benchmarks. start_floor WORK_DIR NBD_URI builds bench/floor-gateway.c into
# WORK_DIR, starts it on a free 127.0.0.1 port against NBD_URI and waits for its metadata route;
# sets floor_pid (add it to what the caller stops) and floor_port.
start_floor() {
  cc -O2 -o "$1/floor-gateway" bench/floor-gateway.c $(pkg-config --cflags --libs libmicrohttpd libnbd)
  floor_port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  "$1/floor-gateway" "$2" "$floor_port" & floor_pid=$!
  local _
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$floor_port/exports/disk" && return 0; sleep 0.05; done
  echo "the floor did not answer on port $floor_port" >&2; return 1
}
