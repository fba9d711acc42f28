# Shell helpers shared by scripts/demo.sh and bench/: waiting for a listener, picking a free port.

# wait_port HOST PORT [SECONDS]: returns once something accepts on HOST:PORT, fails after
# SECONDS (default 30) naming the address.
wait_port() {
  local deadline=$((SECONDS + ${3:-30}))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "nothing listening on $1:$2" >&2; return 1; }
    sleep 0.1
  done
}

# free_port: a port nothing on 127.0.0.1 is bound to right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
