# ---------------------------------------------------------------------------
# The sshcluster fast launcher. One ssh connection per machine starts all of
# that machine's workers at once; the primary accepts them in any order.
# Every ssh connection is a dead man's switch: its stdin is a pipe from this R
# session, and the remote side stops its workers when that pipe closes (this
# session stops, fails or exits). Errors are R conditions of class
# "sshcluster_error" whose message names each failed machine and shows ssh's
# own words.
# ---------------------------------------------------------------------------

# The two internals of 'parallel' used here, named in one place. They are what
# makeCluster(setup_strategy = "parallel") itself uses to greet local workers:
# sendCall() sends a call to a worker, recvResult() reads its answer.
sshcluster_internals <- list(
  sendCall = get("sendCall", envir = asNamespace("parallel")),
  recvResult = get("recvResult", envir = asNamespace("parallel"))
)

# The script each machine runs under sh (R >= 4.0 raw string), with arguments:
# Rscript, number of workers, machine number, master address, port, session
# token, setup timeout, "tunnel" or "direct", "fork" or "fresh".
sshcluster_remote_script <- r"--(
r="$1"; n="$2"; id="$3"; master="$4"; port="$5"; token="$6"; setup="$7"; start="$9"
command -v "$r" >/dev/null 2>&1 || {
  echo "sshcluster: $r not found on $(uname -n) (PATH=$PATH); set rscript: in the inventory" >&2
  exit 127
}
# Behind a reverse tunnel, start only once the master has seen "ready": ssh
# has then processed the answer to its -R request, so the port is ours.
if [ "$8" = tunnel ]; then echo ready; read go || exit 0; fi
# Whatever ends this script stops everything it started: each process it
# knows of and, where it leads a process group (sshd makes every session its
# own), the whole group, which includes forked workers.
# A child forked while this shell traps TERM has that trap until it execs, and
# a TERM that reaches it then is swallowed: so TERM is trapped only once R and
# the port check are started, and the watcher, forked after that, gets SIGKILL.
# Else the wait here could wait for a process that never got its TERM.
group=''; kill -s 0 -- "-$$" 2>/dev/null && group=yes
exec 3<&0 </dev/null; pids=''; probe=''; watch=''
trap 'trap "" TERM; kill -s KILL $watch 2>/dev/null; kill $pids $probe 2>/dev/null
  [ "$group" ] && kill -s TERM -- "-$$" 2>/dev/null; wait' EXIT
# A worker is parallel's own worker loop. SSHCLUSTER_WORKER tells the master
# who connected: "token machine slot".
worker='tryCatch(parallel:::.workRSOCK, error = function(e) parallel:::.slaveRSOCK)()'
start_r() {
  SSHCLUSTER_WORKER="$1" SSHCLUSTER_FORK="$2" "$r" \
    --default-packages=datasets,utils,grDevices,graphics,stats,methods -e "$3" \
    MASTER="$master" PORT="$port" OUT=/dev/null SETUPTIMEOUT="$setup" \
    TIMEOUT=2592000 XDR=TRUE SETUPSTRATEGY=parallel >/dev/null &
  pids="$pids $!"
}
# (R tracks its forks with select(), which stops at file descriptor 1024: two
# per fork, so a machine with more than 256 workers gets fresh ones.)
if [ "$start" = fork ] && [ "$group" ] && [ "$n" -le 256 ]; then
  # One R starts, then forks the workers: one R start-up per machine instead
  # of one per worker. Each worker gets an empty global environment and its
  # own tempdir(), as a fresh R would; the group kill above reaches the forks.
  start_r "$token $id" "$n" 'local({
    w <- Sys.getenv("SSHCLUSTER_WORKER")
    unlink(tempdir(), recursive = TRUE)
    child <- function(i) {
      Sys.setenv(SSHCLUSTER_WORKER = paste(w, i), SSHCLUSTER_FORK = "")
      tempdir(check = TRUE)
      on.exit(unlink(tempdir(), recursive = TRUE))
      '"$worker"'
    }
    n <- as.integer(Sys.getenv("SSHCLUSTER_FORK"))
    jobs <- lapply(seq_len(n), function(i) parallel::mcparallel(child(i), silent = TRUE))
    invisible(parallel::mccollect(jobs))
  })'
else
  # One fresh R per worker, all at once.
  i=1
  while [ $i -le $n ]; do start_r "$token $id $i" "" "$worker"; i=$((i + 1)); done
fi
# One quick check that this machine reaches the master's port, so that a
# firewall is reported in a second rather than after the setup timeout; with
# bash's /dev/tcp where there is bash (a few ms), else with R (tens of ms).
if command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then
  timeout 5 bash --norc --noprofile -c 'exec 3<>"/dev/tcp/$0/$1"' "$master" "$port" \
    >/dev/null 2>&1 &
else
  "$r" --vanilla --default-packages=NULL -e 'a <- commandArgs(TRUE); t0 <- Sys.time()
    tryCatch(close(socketConnection(a[1], as.integer(a[2]), timeout = 5)),
             error = function(e) quit(status = if (Sys.time() - t0 > 4) 124 else 1))' \
    "$master" "$port" >/dev/null 2>&1 &
fi
probe=$!
# The dead man's switch: a shell loop (no child process to leave behind)
# reads stdin until EOF (ssh ended), then stops this script.
trap 'exit 143' HUP INT TERM
(while read -r _ <&3; do :; done; kill -TERM $$) >/dev/null 2>&1 &
watch=$!; exec 3<&-
wait $probe || {
  [ $? = 124 ] && why='timed out after 5 s' || why='was refused'
  echo "sshcluster: R on $(uname -n) cannot connect to the primary at $master port $port:" \
    "the connection $why (firewall or NAT? try tunnel: reverse)" >&2
  exit 3
}
probe=''
# Reaped pids are forgotten, so that the exit trap cannot hit a reused pid. An R
# that failed (to start, say) makes this script fail with its status.
rc=0
for p in $pids; do wait $p || rc=$?; done; pids=''
exit $rc
)--"

# Starts the workers of 'machines' (each a list(host, user, ncore), optionally
# with its own ssh command and rscript) and returns a SOCKcluster, in machine
# order. 'ssh' is the ssh command (with its options) for machines without one.
# fork = TRUE starts one R per machine and forks its workers from it; FALSE
# starts every worker as a fresh Rscript.
sshcluster_launch <- function(machines, primary, ssh, port = NA, tunnel = FALSE,
                              fork = TRUE, setup_timeout = 120,
                              state = sshcluster_state) {
  # The listener stays open while the cluster runs (sshcluster_close() closes
  # it): a host's one-off reachability check may come after the last worker.
  listener <- sshcluster_listen(port)
  state$listener <- listener$socket
  port <- listener$port
  token <- gsub("[^0-9]", "", paste0(Sys.getpid(), format(Sys.time(), "%H%M%OS6")))
  dir <- tempfile("sshcluster-")
  dir.create(dir, mode = "0700")
  state$dir <- dir
  state$ssh <- list()
  n <- vapply(machines, function(m) as.integer(m$ncore), 1L)
  first <- cumsum(c(0L, n))[seq_along(n)]  # spec position before each machine
  cl <- vector("list", sum(n))
  done <- FALSE
  on.exit(if (!done) {
    for (node in cl) if (!is.null(node)) close(node$con)
    sshcluster_close(state, grace = 0)
  }, add = TRUE)
  for (h in seq_along(machines)) {
    m <- machines[[h]]
    f <- function(ext) shQuote(file.path(dir, paste0(h, ext)))
    rscript <- if (is.null(m$rscript)) "Rscript" else m$rscript
    remote <- paste("exec sh -c", shQuote(sshcluster_remote_script), "sshcluster",
                    shQuote(rscript), n[h], h, shQuote(if (tunnel) "127.0.0.1" else primary),
                    port, token, setup_timeout, if (tunnel) "tunnel" else "direct",
                    if (fork) "fork" else "fresh")
    forward <- if (tunnel) sprintf("-o ExitOnForwardFailure=yes -R 127.0.0.1:%d:127.0.0.1:%d",
                                   port, port)
    # ssh runs in the background of a small sh so that its pid and exit status
    # land in files the loop below can watch; fd 3 carries the pipe to ssh.
    destination <- paste(if (!is.null(m$user)) paste("-l", shQuote(m$user)), shQuote(m$host))
    cmd <- paste0("exec 3<&0 2>/dev/null; ", paste(if (is.null(m$ssh)) ssh else m$ssh, forward,
                                       destination, shQuote(remote)),
                  " <&3 >", f(".out"), " 2>", f(".err"), " & echo $! >", f(".pid"),
                  "; wait $!; echo $? >", f(".tmp"), "; mv ", f(".tmp"), " ", f(".status"))
    state$ssh[[h]] <- list(host = m$host, pipe = pipe(cmd, open = "w"),
                           file = file.path(dir, h), go = !tunnel)
  }

  # Accept workers as they come; greet each with a call that returns its
  # SSHCLUSTER_WORKER ("token machine slot"), which says where it belongs.
  pending <- list()
  on.exit(for (p in pending) close(p$con), add = TRUE)
  got <- integer(length(machines))
  t0 <- Sys.time()
  repeat {
    if (all(got == n)) break
    failed <- sshcluster_ssh_failures(state, which(got < n))
    if (length(failed)) {
      # Give the other machines a moment so that one error reports them all.
      Sys.sleep(0.5)
      failed <- sshcluster_ssh_failures(state, which(got < n))
      sshcluster_fail(state, failed, got, n, "could not start the cluster")
    }
    if (difftime(Sys.time(), t0, units = "secs") > setup_timeout)
      sshcluster_fail(state, integer(), got, n, sprintf(
        "workers did not connect within %d s (setup_timeout)", as.integer(setup_timeout)))
    if (tunnel) sshcluster_send_go(state)
    ready <- socketSelect(c(list(listener$socket), lapply(pending, `[[`, "con")),
                          timeout = 0.1)
    if (ready[1]) {
      con <- socketAccept(listener$socket, blocking = TRUE, open = "a+b", timeout = 2592000)
      node <- structure(list(con = con, host = NA_character_, rank = NA_integer_),
                        class = "SOCKnode")
      ok <- tryCatch({
        sshcluster_internals$sendCall(node, Sys.getenv, list("SSHCLUSTER_WORKER"))
        TRUE
      }, error = function(e) FALSE)
      if (ok) pending[[length(pending) + 1L]] <- node else close(con)
    }
    answered <- which(ready[-1])
    for (i in answered) {
      node <- pending[[i]]
      who <- tryCatch(strsplit(sshcluster_internals$recvResult(node), " ")[[1]],
                      error = function(e) character())
      h <- suppressWarnings(as.integer(who[2]))
      slot <- suppressWarnings(as.integer(who[3]))
      if (length(who) == 3L && who[1] == token && !is.na(h) && h >= 1L &&
          h <= length(n) && !is.na(slot) && slot >= 1L && slot <= n[h] &&
          is.null(cl[[first[h] + slot]])) {
        node$host <- machines[[h]]$host
        node$rank <- first[h] + slot
        cl[[node$rank]] <- node
        got[h] <- got[h] + 1L
      } else {
        close(node$con)  # a stale worker of an earlier launch, or a stranger
      }
    }
    if (length(answered)) pending <- pending[-answered]
  }
  done <- TRUE
  class(cl) <- c("SOCKcluster", "cluster")
  cl
}

# A listening socket on 'port', or (port = NA) on a free port in 11000-11999.
sshcluster_listen <- function(port) {
  if (!is.na(port)) {
    socket <- tryCatch(serverSocket(port), error = function(e) stop(
      sprintf("sshcluster: cannot listen on port %d (taken?): %s", port, conditionMessage(e)),
      call. = FALSE))
    return(list(socket = socket, port = port))
  }
  start <- (Sys.getpid() * 7919 + as.integer(Sys.time())) %% 1000
  for (k in 0:999) {
    port <- 11000L + as.integer((start + k) %% 1000)
    socket <- tryCatch(suppressWarnings(serverSocket(port)), error = function(e) NULL)
    if (!is.null(socket)) return(list(socket = socket, port = port))
  }
  stop("sshcluster: no free port in 11000-11999 on this machine", call. = FALSE)
}

# Machines (by number, among 'which') whose ssh has ended.
sshcluster_ssh_failures <- function(state, which) {
  which[file.exists(paste0(vapply(state$ssh[which], `[[`, "", "file"), ".status"))]
}

# Behind a reverse tunnel: tell each machine that printed "ready" to start.
sshcluster_send_go <- function(state) {
  for (h in seq_along(state$ssh)) {
    s <- state$ssh[[h]]
    out <- paste0(s$file, ".out")
    # The shell that starts ssh creates the file; it may not have run yet.
    if (!s$go && file.exists(out) && length(readLines(out, n = 1L, warn = FALSE))) {
      try({ writeLines("go", s$pipe); flush(s$pipe) }, silent = TRUE)
      state$ssh[[h]]$go <- TRUE
    }
  }
}

# Stops everything the launch started, then signals an error naming each
# failed machine with ssh's own message (or, on timeout, each machine still
# missing workers). The condition's 'hosts' lists those machines.
sshcluster_fail <- function(state, failed, got, n, what) {
  lines <- character()
  for (h in seq_along(n)) {
    if (got[h] == n[h]) next
    s <- state$ssh[[h]]
    err <- sshcluster_read(paste0(s$file, ".err"))
    if (h %in% failed) {
      status <- sshcluster_read(paste0(s$file, ".status"))
      lines <- c(lines, sprintf("  %s: ssh exited with status %s%s", s$host, status,
                                if (nzchar(err)) paste0(": ", err) else ""))
    } else {
      lines <- c(lines, sprintf("  %s: %d of %d workers connected when the launch stopped%s",
                                s$host, got[h], n[h],
                                if (nzchar(err)) paste0("; ssh says: ", err) else ""))
    }
  }
  hosts <- vapply(state$ssh[if (length(failed)) failed else which(got < n)], `[[`, "", "host")
  sshcluster_close(state, grace = 0)
  msg <- sprintf("sshcluster: %s (%d of %d workers connected, all stopped):\n%s",
                 what, sum(got), sum(n), paste(lines, collapse = "\n"))
  stop(structure(class = c("sshcluster_error", "error", "condition"),
                 list(message = msg, call = NULL, hosts = hosts)))
}

sshcluster_read <- function(path) {
  text <- if (file.exists(path)) readLines(path, warn = FALSE) else character()
  paste(unique(trimws(text[nzchar(trimws(text))])), collapse = " / ")
}

# Closes every ssh connection of 'state'. Each machine stops its workers when
# its connection closes. 'grace' seconds are left for ssh to end by itself
# (after stopCluster() the workers exit and so does ssh); the rest is killed.
sshcluster_close <- function(state, grace = 1) {
  if (is.null(state$ssh) && is.null(state$listener)) return(invisible())
  deadline <- Sys.time() + grace
  running <- function() Filter(function(s) !file.exists(paste0(s$file, ".status")), state$ssh)
  while (length(running()) && Sys.time() < deadline) Sys.sleep(0.05)
  for (s in running()) {
    pidfile <- paste0(s$file, ".pid")
    for (i in 1:20) if (!nzchar(sshcluster_read(pidfile))) Sys.sleep(0.05)  # just started
    pid <- suppressWarnings(as.integer(sshcluster_read(pidfile)))
    if (length(pid) == 1L && !is.na(pid)) tools::pskill(pid, tools::SIGTERM)
  }
  for (s in state$ssh) try(close(s$pipe), silent = TRUE)
  if (!is.null(state$listener)) try(close(state$listener), silent = TRUE)
  state$ssh <- NULL
  state$listener <- NULL
  unlink(state$dir, recursive = TRUE)
  invisible()
}
