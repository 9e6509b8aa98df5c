# Background processes of scripts/control-plane and scripts/node, sourced by
# both. The caller sets STATE_DIR (every process has it on its command line),
# keeps each process's output in $STATE_DIR/logs/<name>.log and its pid in
# $STATE_DIR/<name>.pid, and defines die.
#
# A process is "ours" while its pid runs with our state directory on its
# command line, so a recycled pid is never signalled. While a process execs,
# Linux shows an empty command line for a moment (measured: twice per start,
# once for each exec of `setsid nohup cmd`); a check that lands then must not
# take a starting process for a dead one, so an empty command line of a live,
# non-zombie process is read again.

pid_of() { [[ -f "$STATE_DIR/$1.pid" ]] && cat "$STATE_DIR/$1.pid"; }

# The NUL-separated command line of a pid, with NULs as spaces; empty while the
# process execs or once it has exited.
cmdline_of() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true; }

# Whether a pid exists and is not a zombie (an exited child not yet reaped).
live_pid() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

is_ours() {
  local pid line i
  pid=$(pid_of "$1") || return 1
  for i in 1 2 3 4 5 6 7 8 9 10; do
    line=$(cmdline_of "$pid")
    if [[ -n $line ]]; then
      [[ $line == *"$STATE_DIR/"* ]]
      return
    fi
    live_pid "$pid" || return 1
    sleep 0.05
  done
  return 1
}

start() { # name command args...
  local name=$1; shift
  setsid nohup "$@" >"$STATE_DIR/logs/$name.log" 2>&1 </dev/null &
  local pid=$! i line
  echo "$pid" >"$STATE_DIR/$name.pid"
  # Return once the command itself runs: before that the pid runs this
  # script, then setsid, then nohup.
  for i in $(seq 1 200); do
    line=$(cmdline_of "$pid")
    [[ $line == "$1 "* ]] && return 0
    live_pid "$pid" || return 0
    sleep 0.05
  done
}

# Dies with the end of the process's log and, when this script started it,
# how it ended.
alive() {
  is_ours "$1" && return 0
  local pid rc=0 how=""
  if pid=$(pid_of "$1") && ! live_pid "$pid"; then
    wait "$pid" 2>/dev/null || rc=$?
    # 127: not a child of this script (or already reaped), so unknown.
    if ((rc == 127)); then :
    elif ((rc > 128)); then how=" on signal $((rc - 128))"
    else how=" with status $rc"; fi
  fi
  die "$1 exited$how (see $STATE_DIR/logs/$1.log):
$(tail -n 20 "$STATE_DIR/logs/$1.log" 2>/dev/null)"
}
