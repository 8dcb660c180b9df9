# Helpers for the scripts that run `ftune serve` (sourced after lib.bash; they use $FTUNE, $WORK,
# $PID, $PORT and $fails).
# start_server LOG ARGS...: ftune serve on a free port, in the background; sets PID and PORT.
start_server() {
  local log=$1
  shift
  "$FTUNE" serve --port 0 "$@" 2>"$log" &
  PID=$!
  PORT=
  for _ in $(seq 1 300); do
    PORT=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | sed 's/.*://' || true)
    [ -n "$PORT" ] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "FAIL server did not start: $(cat "$log")"
  fails=$((fails + 1))
  return 1
}
# call METHOD PATH [BODY]: the response body in $WORK/body, the status in $STATUS.
call() {
  STATUS=$(curl -s -o "$WORK/body" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' \
    ${3:+--data-binary "$3"} "http://127.0.0.1:$PORT$2" || echo 000)
}
# check NAME PYTHON: PYTHON asserts on `r` (the last response's JSON) and `status`.
check() {
  if python3 -c "import json, sys; status = $STATUS; r = json.load(open('$WORK/body')); $2" 2>"$WORK/check.err"; then
    echo "ok   $1"
  else
    echo "FAIL $1 (HTTP $STATUS): $(head -c 400 "$WORK/body") $(tail -1 "$WORK/check.err")"
    fails=$((fails + 1))
  fi
}
stop_server() {  # stop_server LOG: SIGTERM, then the exit status must be 0
  local rc=0
  kill -TERM "$PID"
  wait "$PID" || rc=$?
  PID=
  if [ "$rc" -eq 0 ] && grep >/dev/null "server stopped by signal 15" "$1"; then
    echo "ok   SIGTERM stops the server, status 0"
  else
    echo "FAIL stop: status $rc: $(cat "$1")"
    fails=$((fails + 1))
  fi
}

