# ---------------------------------------------------------------------------
# sshcluster's fast launch and its running cluster, on the primary.
#
# The generated cluster.R runs this file inside local(), then calls
# start(config): only the names start() assigns (parallelCluster,
# sshcluster_stop, sshcluster_repair) reach the global environment.
#
# * One supervisor process (supervisor.sh) holds one ssh session per host; the
#   R session holds one pipe to it, so a cluster costs R the listening socket,
#   that pipe and one socket per worker, as makeCluster() does. Each session's
#   stdin carries the host's worker tokens, then a heartbeat: a host whose
#   session ends or falls silent stops its workers (remote.sh).
# * Every connection to the R port proves it holds its slot's key, by challenge
#   and response in a fixed-size exchange of raw bytes (proof.R), before anything
#   it sends is unserialized; the keys are random bytes from the OS, one per
#   worker slot, and are never sent over the connection.
# * The cluster's nodes have methods for parallel's recvData, recvOneData and
#   sendData that wait in socketSelect() and look, every second, at whether
#   the ssh session of each host is still there: a lost host is an error that
#   names it, with ssh's own words, instead of a wait without end.
# ---------------------------------------------------------------------------

# parallel's internals, named in one place: the generics a SOCKcluster's nodes
# dispatch on, and how a call and the end of a worker are sent.
parallel_ns <- asNamespace("parallel")
internals <- list(
  sendCall = get("sendCall", envir = parallel_ns),
  postNode = get("postNode", envir = parallel_ns)
)

TOKEN_SIZE <- 16L          # each slot's key is its two tokens (see proof.R)
HANDSHAKE_SECONDS <- 2     # a connection that has not sent its hello by then is closed
PROOF_SECONDS <- 5         # nor one challenged that has not proved itself by then (a
                           # busy host's forked workers all hash at once; the worker
                           # of a proof refused as too late connects again)
MAX_PENDING <- 32L         # connections proving themselves at one time
ACCEPT_BURST <- 256L       # connections taken from the kernel's queue at one go
# How fast a lost host is noticed. These values are what users get; a test of a fault
# may shorten them with options() before source() (sshcluster.heartbeat_seconds and so
# on), and one test per fault keeps them.
timing <- function(name, default, unit = " of seconds") {
  value <- getOption(paste0("sshcluster.", name), default)
  if (!is.numeric(value) || length(value) != 1L || is.na(value) || value <= 0)
    stop(sprintf("sshcluster: option sshcluster.%s must be one positive number%s",
                 name, unit), call. = FALSE)
  value
}
HEARTBEAT_SECONDS <- timing("heartbeat_seconds", 10) # the supervisor's heartbeat to every host
SILENCE_SECONDS <- timing("silence_seconds", 40)     # a host stops its workers after this
                                                      # long without one
STALL_SECONDS <- timing("stall_seconds", 15) # a message that makes no progress for this
                                             # long (R waits it out twice when writing)
                                             # has failed
if (SILENCE_SECONDS < 2 * HEARTBEAT_SECONDS)
  stop("sshcluster: option sshcluster.silence_seconds must be at least twice ",
       "sshcluster.heartbeat_seconds (a host would stop its workers between two beats)",
       call. = FALSE)
# Our own ssh options: keepalive (a silent host ends the session after COUNT unanswered
# probes INTERVAL seconds apart), no terminal, and no connection shared with a master
# from the user's config (its keepalive and lifetime would not be the cluster's).
OUR_SSH <- c("-T", "-o", sprintf("ServerAliveInterval=%d",
                                 as.integer(ceiling(timing("keepalive_seconds", 5)))),
             "-o", sprintf("ServerAliveCountMax=%d",
                           as.integer(ceiling(timing("keepalive_count", 3, "")))),
             "-o", "ControlMaster=no", "-o", "ControlPath=none")
LOCALE_VARS <- c("LANG", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_TIME", "LC_MONETARY",
                 "LC_MESSAGES", "LC_PAPER", "LC_MEASUREMENT")
RESERVED_CONNECTIONS <- 2L # left free for the user's own files

# ---------------------------------------------------------------------------
# Starting

start <- function(config) {
  S <- new.env()
  S$key <- sourced_file()
  again <- stop_previous(S$key)
  S$config <- config
  S$console <- identical(config$worker_output, "console")
  S$known_hosts <- known_hosts_words(config$known_hosts)
  S$limit <- connection_limit()
  check_connections(S, sum(vapply(config$machines, function(m) as.integer(m$ncore), 1L)))
  S$id <- random_hex(8L)
  S$stop <- function() stop_cluster(S)
  assign(S$id, S, envir = registry)
  S$refused <- 0L
  S$report_sizes <- list()
  S$gone <- list()
  S$ended <- list()
  S$next_id <- 0L
  S$sessions <- list()
  S$lost <- list()
  ok <- FALSE
  on.exit(if (!ok) shutdown(S, grace = 0), add = TRUE)
  open_supervisor(S)
  # R's exit closes the supervisor's pipe and waits for it to end; a process that R
  # forked (mcparallel, a fork cluster) may hold that pipe open, so the end of the
  # pipe would never come: the supervisor is told to stop instead.
  reg.finalizer(S, function(S) shutdown(S, grace = 0), onexit = TRUE)
  n <- vapply(config$machines, function(m) as.integer(m$ncore), 1L)
  S$first <- cumsum(c(0L, n))[seq_along(n)]  # spec position before each machine
  S$cluster <- structure(vector("list", sum(n)), class = c("sshcluster", "SOCKcluster",
                                                           "cluster"))
  S$calls <- integer(sum(n))  # per worker: calls sent and not yet answered
  wanted <- lapply(seq_along(n), function(h) seq_len(n[h]))
  got <- launch(S, wanted, deadline = Sys.time() + config$setup_timeout, fail_fast = TRUE)
  for (node in got) S$cluster[[node$rank]] <- node
  ok <- TRUE
  if (S$refused > 0L)
    message(sprintf("sshcluster: refused %d connection%s to port %d that did not prove %s a worker",
                    S$refused, if (S$refused == 1L) "" else "s", S$port,
                    if (S$refused == 1L) "itself" else "themselves"))
  publish(S, again)
  invisible(S$cluster)
}

# What the global environment gets: the cluster and the two functions (a later
# source() of another file replaces these names, not the cluster: keep them under
# names of your own to use both). The inventory's registrations, and those that
# followed the cluster this one replaces, are made.
publish <- function(S, again) {
  assign("parallelCluster", S$cluster, envir = globalenv())
  assign("sshcluster_stop", function() invisible(stop_cluster(S)), envir = globalenv())
  assign("sshcluster_repair", function() repair(S), envir = globalenv())
  register(union(S$config$register, again), S$cluster)
}

# How many connections this R allows in all: as parallelly's availableConnections()
# finds it, by opening connections until R refuses (128 before R 4.4, which
# takes --max-connections).
connection_limit <- function() {
  cons <- list()
  on.exit(for (con in cons) close(con))
  tryCatch({
    for (i in seq_len(16384L)) cons[[i]] <- rawConnection(raw(0L))
    Inf
  }, error = function(e) length(getAllConnections()))
}

# Stops before anything is started when the workers would not fit.
check_connections <- function(S, workers) {
  used <- length(getAllConnections())
  free <- S$limit - used
  needed <- workers + 2L  # the listening socket and the supervisor's pipe
  if (needed + RESERVED_CONNECTIONS <= free) return(invisible())
  most <- max(0L, free - 2L - RESERVED_CONNECTIONS)
  stop(structure(class = c("sshcluster_error", "error", "condition"), list(
    message = sprintf(paste0(
      "sshcluster: %d workers need %d R connections (one each, plus the listening socket ",
      "and the ssh supervisor), and %d more should stay free for your own files, but this ",
      "R session has %d free (%d in all, %d in use). Nothing was started.\n",
      "  Use at most %d workers from this primary, or run R >= 4.4 started with ",
      "--max-connections=%d."),
      workers, needed, RESERVED_CONNECTIONS, free, S$limit, used, most,
      used + needed + RESERVED_CONNECTIONS),
    call = NULL, hosts = character())))
}

# The launch directory (only this user can read it) and the supervisor.
open_supervisor <- function(S) {
  S$dir <- tempfile("sshcluster-")
  dir.create(S$dir, mode = "0700")
  script <- file.path(S$dir, "supervisor.sh")
  writeLines(S$config$supervisor_script, script)
  S$supervisor <- pipe(paste("exec sh", sq(script), sq(S$dir), HEARTBEAT_SECONDS,
                             Sys.getpid()), open = "w")
}

# A listening socket on the inventory's port, or on a free one in R's range.
listen <- function(S) {
  port <- S$config$port
  if (!is.na(port)) {
    S$listener <- tryCatch(serverSocket(port), error = function(e) stop(sprintf(
      "sshcluster: cannot listen on port %d (taken?): %s", port, conditionMessage(e)),
      call. = FALSE))
    S$port <- port
    return(invisible())
  }
  range <- S$config$port_range
  size <- range[2] - range[1] + 1L
  start <- (Sys.getpid() * 7919 + as.integer(Sys.time())) %% size
  for (k in seq_len(size) - 1L) {
    port <- range[1] + as.integer((start + k) %% size)
    socket <- tryCatch(suppressWarnings(serverSocket(port)), error = function(e) NULL)
    if (!is.null(socket)) {
      S$listener <- socket
      S$port <- port
      return(invisible())
    }
  }
  stop(sprintf("sshcluster: no free port in %d-%d on this machine", range[1], range[2]),
       call. = FALSE)
}

# ---------------------------------------------------------------------------
# One host's session: its tokens and its ssh command

# Random bytes from the OS, as hex; R's own generator (and the user's
# .Random.seed) are not touched.
random_hex <- function(n) {
  con <- file("/dev/urandom", "rb", raw = TRUE)
  on.exit(close(con))
  paste(as.character(readBin(con, "raw", n)), collapse = "")
}

hex_bytes <- function(hex) {
  at <- seq(1L, nchar(hex), by = 2L)
  as.raw(strtoi(substring(hex, at, at + 1L), 16L))
}

# Starts a session on machine h for the given worker slots; returns its id.
start_host <- function(S, h, slots) {
  S$next_id <- S$next_id + 1L
  id <- sprintf("%d.%d", h, S$next_id)
  tokens <- lapply(slots, function(slot) list(
    slot = slot, worker = random_hex(TOKEN_SIZE), primary = random_hex(TOKEN_SIZE)))
  S$sessions[[id]] <- list(id = id, h = h, slots = slots, tokens = tokens,
                           file = file.path(S$dir, id), port = session_port(S, h))
  write_remote_script(S)
  writeLines(host_command(S, h, id), paste0(file.path(S$dir, id), ".sh"))
  line <- paste(vapply(tokens, function(t) paste(t$slot, t$worker, t$primary, sep = ":"),
                       ""), collapse = ",")
  supervise(S, paste("start", id, line, if (S$config$tunnel) "tunnel" else "direct"))
  id
}

# The port a session's workers connect to on their host. Direct: the primary's
# own. Behind a reverse tunnel each session asks its host's sshd to listen on a
# port of its own: a host's first session on the primary's port, any later one
# (a repair's) on a port that no earlier session to that host used, since a
# sibling session may still hold its port, and so may the host's sshd for the
# session of a host that was cut off, until it notices the cut.
session_port <- function(S, h) {
  if (!S$config$tunnel) return(S$port)
  used <- c(S$port, unlist(lapply(Filter(function(s) s$h == h, S$sessions), `[[`, "port")))
  if (length(used) == 1L) return(S$port)
  range <- S$config$port_range
  free <- setdiff(seq(range[1], range[2]), used)
  free[strtoi(random_hex(3L), 16L) %% length(free) + 1L]
}

# One shell word: single quotes, a single quote written as '\'' and a ! as '\!'
# (csh and tcsh expand ! even inside single quotes, and even in "csh -c"; every other
# shell reads \! outside quotes as !). The same word in sh, bash, csh, tcsh and fish,
# for text without a backslash (the inventory refuses one in what reaches a host).
# (R's own shQuote() switches to double quotes when the text has a single quote.)
sq <- function(x) {
  x <- gsub("'", "'\\''", x, fixed = TRUE)
  paste0("'", gsub("!", "'\\!'", x, fixed = TRUE), "'")
}

supervise <- function(S, command) {
  writeLines(command, S$supervisor)
  flush(S$supervisor)
}

# What every host's session reads first on its stdin (the supervisor sends it):
# the host's script, with the workers' R code in $code, then the end-of-script
# line. The command line ssh runs (cfg$read_script, see read_script.sh) only reads
# and runs it, so that any login shell runs it alike. (Written again if a cleaner
# of temporary files took it, for a repair's relaunch.)
write_remote_script <- function(S) {
  f <- file.path(S$dir, "remote.txt")
  if (!file.exists(f))
    writeLines(c(paste0("code=", sq(S$config$worker_code)), S$config$remote_script,
                 S$config$end_of_script), f)
}

# The shell script that runs machine h's ssh for session id, and records its
# pid and exit status. (Kept apart from the accept loop below, as parallelly
# keeps makeNodePSOCK() apart from makeClusterPSOCK().)
host_command <- function(S, h, id) {
  cfg <- S$config
  m <- cfg$machines[[h]]
  f <- function(ext) sq(paste0(file.path(S$dir, id), ext))
  port <- S$sessions[[id]]$port
  remote <- remote_command(S, h, port)
  forward <- if (cfg$tunnel)
    sprintf("-o ExitOnForwardFailure=yes -R 127.0.0.1:%d:127.0.0.1:%d", port, S$port)
  ssh <- paste(if (is.null(cfg$host_ssh[[h]])) cfg$ssh else cfg$host_ssh[[h]],
               S$known_hosts)
  destination <- paste(if (!is.null(m$user)) paste("-l", sq(m$user)), sq(m$host))
  # A TERM (the supervisor's: its way to end a session, also once the directory
  # and its pid files are gone) is passed on to ssh; a wait it cut short is waited
  # again, so that .status holds ssh's own status.
  c("exec 3<&0",
    "pid=''",
    "trap '[ -n \"$pid\" ] && kill -s TERM \"$pid\" 2>/dev/null' TERM",
    paste(ssh, paste(OUR_SSH, collapse = " "), forward, destination, sq(remote),
          "<&3 >", f(".out"), "2>", f(".err"), "&"),
    "pid=$!",
    paste("echo \"$pid\" >", f(".pid")),
    "wait \"$pid\"; rc=$?",
    "while [ \"$rc\" -gt 128 ] && kill -s 0 \"$pid\" 2>/dev/null; do wait \"$pid\"; rc=$?; done",
    paste("echo \"$rc\" >", f(".tmp"), "&& mv", f(".tmp"), f(".status")))
}

# The one line ssh hands machine h's login shell (sh, bash, csh, tcsh or fish): single-
# quoted words only, and no value holds a backslash (the inventory refuses one; fish
# reads \\ and \' inside single quotes), so every such shell reads the same words.
remote_command <- function(S, h, port) {
  cfg <- S$config
  m <- cfg$machines[[h]]
  rscript <- if (is.null(m$rscript)) "Rscript" else m$rscript
  master <- if (cfg$tunnel) "127.0.0.1" else cfg$workers_reach
  # (remote.sh makes the workdir and starts the workers in it)
  env <- c(locale_assignments(cfg$locale), paste0("SSHCLUSTER_OUTPUT=", cfg$worker_output),
           if (!is.null(cfg$workdir)) paste0("SSHCLUSTER_WORKDIR=", cfg$workdir),
           container_assignments(S, h))
  paste(
    "exec sh -c", sq(cfg$read_script),
    "sshcluster", sq(rscript), sq(master), port, h, cfg$setup_timeout,
    if (cfg$tunnel) "tunnel" else "direct", if (cfg$fork) "fork" else "fresh",
    SILENCE_SECONDS, paste(sq(env), collapse = " "))
}

# NAME=VALUE for machine h's container (sshcluster/containers/container.sh), if it
# has one. Its name: the cluster's (its launch directory's) and the host's, and the
# session's, since a repair's session may start while the old one's is going.
container_assignments <- function(S, h) {
  c <- S$config$containers[[h]]
  if (is.null(c)) return(character())
  cluster <- sub("^sshcluster-", "", basename(S$dir))
  host <- gsub("[^A-Za-z0-9_.-]", "-", S$config$machines[[h]]$host)
  session <- S$next_id
  c(paste0("SSHCLUSTER_CONTAINER=", c$engine),
    paste0("SSHCLUSTER_CONTAINER_IMAGE=", c$image),
    paste0("SSHCLUSTER_CONTAINER_PULL=", c$pull),
    paste0("SSHCLUSTER_CONTAINER_OPTIONS=", c$options),
    paste0("SSHCLUSTER_CONTAINER_NAME=", sprintf("sshcluster-%s-%s-%d", cluster, host, session)))
}

# NAME=VALUE for the workers' locale: the primary's own, unless the inventory
# names one.
locale_assignments <- function(locale) {
  if (!is.null(locale)) return(c(paste0("LANG=", locale), "LC_ALL="))
  values <- Sys.getenv(LOCALE_VARS)
  # (only what a locale name holds: these reach every host's login shell)
  values <- values[grepl("^[A-Za-z0-9_.@-]+$", values)]
  if (length(values)) paste0(names(values), "=", values) else character()
}

session_ended <- function(S, id) file.exists(paste0(S$sessions[[id]]$file, ".status"))

# What ssh said when session id ended: its status and its last words.
session_reason <- function(S, id) {
  f <- S$sessions[[id]]$file
  status <- read_text(paste0(f, ".status"))
  err <- read_text(paste0(f, ".err"))
  sprintf("ssh exited with status %s%s", if (nzchar(status)) status else "?",
          if (nzchar(err)) paste0(": ", err) else "")
}

# A file's last lines, each once, as one line. (ssh's stderr holds its own words
# and sshcluster's, but may also hold whatever the workers' programs printed: the
# end is what explains how the session ended.)
read_text <- function(path, last = 4L) {
  text <- if (file.exists(path)) readLines(path, warn = FALSE) else character()
  text <- unique(trimws(text[nzchar(trimws(text))]))
  paste(utils::tail(text, last), collapse = " / ")
}

# ---------------------------------------------------------------------------
# Accepting workers

# Starts sessions for the wanted slots (a list: machine -> slots) and accepts
# their workers until all are there or the deadline passes. With fail_fast, a
# host whose session ends first stops everything with an error naming each
# failed host; without, such hosts are left out. Returns the new nodes.
launch <- function(S, wanted, deadline, fail_fast) {
  # The port listens only while a launch (or a repair's relaunch) accepts workers:
  # between launches nobody can queue connections on it (a queue filled before a
  # repair would meet the relaunch). It listens before any host starts, so a
  # worker's refused connection means a firewall, not "too early".
  listen(S)
  on.exit(if (!is.null(S$listener)) {
    try(close(S$listener), silent = TRUE)
    S$listener <- NULL
  }, add = TRUE)
  ids <- character()
  for (h in seq_along(wanted))
    if (length(wanted[[h]])) ids <- c(ids, start_host(S, h, wanted[[h]]))
  expected <- list()
  for (id in ids) for (t in S$sessions[[id]]$tokens)
    expected[[sprintf("%d.%d", S$sessions[[id]]$h, t$slot)]] <- c(t, id = id)
  nodes <- list()
  pending <- list()
  done <- FALSE
  on.exit({
    for (p in pending) try(close(p$con), silent = TRUE)
    if (!done) for (node in nodes) try(close(node$con), silent = TRUE)
  }, add = TRUE)
  lost <- character()
  # One connection's turn: reads what it sent; once its hello is whole, answers
  # the challenge (or refuses a slot not expected); once its proof is whole,
  # admits or refuses it; refuses it after HANDSHAKE_SECONDS without a hello, or
  # PROOF_SECONDS without a proof. NULL: done with it.
  step <- function(p) {
    if (is.null(p$expect)) {
      p$hello <- read_available(p$con, p$hello, HELLO_SIZE)
      start <- seq_len(min(4L, length(p$hello)))
      if (!identical(p$hello[start], PROOF_MAGIC[start])) {  # not a worker: no more time
        refuse(S, p$con)
        return(NULL)
      }
      if (length(p$hello) == HELLO_SIZE) {
        p <- challenge(S, p, expected)
        if (is.null(p)) return(NULL)
      }
      got <- p$hello
    }
    if (!is.null(p$expect)) {
      p$proof <- read_available(p$con, p$proof, MAC_SIZE)
      if (length(p$proof) == MAC_SIZE) {
        # (the slot is looked up again: another connection may have taken it since)
        if (!same_bytes(p$proof, p$expect) || is.null(expected[[p$slot_id]])) {
          refuse(S, p$con)
        } else {
          node <- admit(S, p, expected[[p$slot_id]])
          expected[[p$slot_id]] <<- NULL
          nodes[[length(nodes) + 1L]] <<- node
        }
        return(NULL)
      }
      got <- p$proof
    }
    limit <- if (is.null(p$expect)) HANDSHAKE_SECONDS else PROOF_SECONDS
    if (!is.null(attr(got, "eof")) ||
        difftime(Sys.time(), p$since, units = "secs") > limit) {
      refuse(S, p$con)
      return(NULL)
    }
    p
  }
  repeat {
    open_ids <- setdiff(unique(vapply(expected, `[[`, "", "id")), lost)
    if (!length(open_ids)) break
    ended <- open_ids[vapply(open_ids, function(id) session_ended(S, id), NA)]
    if (length(ended)) {
      if (fail_fast) {
        Sys.sleep(0.5)  # so that one error reports every host that fails at once
        ended <- open_ids[vapply(open_ids, function(id) session_ended(S, id), NA)]
        launch_failed(S, nodes, expected, ended, "could not start the cluster")
      }
      lost <- c(lost, ended)
      next
    }
    if (Sys.time() > deadline) {
      if (fail_fast) launch_failed(S, nodes, expected, character(), sprintf(
        "workers did not connect within %d s (setup_timeout)",
        as.integer(S$config$setup_timeout)))
      lost <- c(lost, open_ids)
      next
    }
    ready <- socketSelect(c(list(S$listener), lapply(pending, `[[`, "con")), timeout = 0.1)
    # Take every connection waiting, so that a flood cannot fill the kernel's queue
    # and keep genuine workers out. A new connection's hello is usually there
    # already and is checked at once; beyond MAX_PENDING (or R's free
    # connections) the oldest connection still proving itself makes room.
    pending <- Filter(Negate(is.null), lapply(pending, step))
    taken <- 0L
    while (ready[1] && taken < ACCEPT_BURST) {
      if (length(pending) >= MAX_PENDING || S$limit - length(getAllConnections()) < 1L) {
        # The oldest that has not sent a whole hello makes room, after a last look at
        # what it sent. One that was challenged is not closed to make room (its worker
        # would have to start again). With only challenged ones waiting, the rest waits
        # in the kernel's queue.
        unproven <- which(vapply(pending, function(p) is.null(p$expect), NA))
        if (!length(unproven)) break
        victim <- unproven[1]
        last <- step(pending[[victim]])
        if (!is.null(last) && !is.null(last$expect)) {
          # its hello came whole at this last look, and it was challenged: it stays
          pending[[victim]] <- last
          break
        }
        if (!is.null(last)) refuse(S, last$con)
        pending <- pending[-victim]
      }
      con <- socketAccept(S$listener, blocking = TRUE, open = "a+b",
                          timeout = STALL_SECONDS, options = "no-delay")
      p <- step(list(con = con, hello = raw(0), proof = raw(0), since = Sys.time()))
      if (!is.null(p)) pending[[length(pending) + 1L]] <- p
      taken <- taken + 1L
      ready[1] <- socketSelect(list(S$listener), timeout = 0)
    }
    # slots of lost sessions are no longer expected
    expected <- expected[!vapply(expected, function(e) e$id %in% lost, NA)]
    if (!length(expected)) break
  }
  # A session given up on (too slow) ends now, and so do the workers it did admit.
  for (id in lost) if (!session_ended(S, id)) supervise(S, paste("kill", id))
  nodes <- Filter(function(node) !(node$session %in% lost), nodes)
  done <- TRUE
  nodes
}

# Reads what has arrived of a message of 'size' bytes, without ever waiting for
# more: one byte at a time while socketSelect() says there is one (a whole
# message usually arrives at once and is then in R's buffer).
read_available <- function(con, have, size) {
  while (length(have) < size && socketSelect(list(con), timeout = 0)) {
    b <- readBin(con, "raw", 1L)
    if (!length(b)) return(structure(have, eof = TRUE))
    have <- c(have, b)
  }
  have
}

refuse <- function(S, con) {
  S$refused <- S$refused + 1L
  close(con)
}

hello_int <- function(hello, at) readBin(hello[at:(at + 3L)], "integer", size = 4L,
                                         endian = "big")

# A whole hello for an expected slot: answers with a fresh nonce and the primary's
# MAC, and returns the connection's state, now waiting for the worker's MAC; else
# refuses it and returns NULL.
challenge <- function(S, p, expected) {
  p$slot_id <- sprintf("%d.%d", hello_int(p$hello, 5L), hello_int(p$hello, 9L))
  e <- expected[[p$slot_id]]
  if (is.null(e)) {
    refuse(S, p$con)
    return(NULL)
  }
  key <- c(hex_bytes(e$worker), hex_bytes(e$primary))
  nonce <- random_bytes(NONCE_SIZE)
  writeBin(c(nonce, proof_mac(key, "primary", p$hello, nonce)), p$con)
  flush(p$con)
  p$expect <- proof_mac(key, "worker", p$hello, nonce)
  p
}

# A connection that proved it holds the key of slot e: a node of the cluster. Its
# worker is told so (till then it takes nothing for granted).
admit <- function(S, p, e) {
  writeBin(ADMITTED, p$con)
  flush(p$con)
  h <- hello_int(p$hello, 5L)
  slot <- hello_int(p$hello, 9L)
  structure(list(con = p$con, host = S$config$machines[[h]]$host, rank = S$first[h] + slot,
                 h = h, slot = slot, pid = hello_int(p$hello, 13L), session = e$id,
                 launch = S$id),
            class = c("sshcluster_node", "SOCKnode"))
}

# Stops everything started and signals an error naming each failed machine
# with ssh's own message (or, on a timeout, each machine still missing
# workers). The condition's 'hosts' lists those machines.
launch_failed <- function(S, nodes, expected, ended, what) {
  missing <- table(factor(vapply(expected, function(e) S$sessions[[e$id]]$h, 1L),
                          levels = seq_along(S$config$machines)))
  n <- vapply(S$config$machines, function(m) as.integer(m$ncore), 1L)
  failed_h <- vapply(ended, function(id) S$sessions[[id]]$h, 1L)
  lines <- character()
  for (h in seq_along(n)) {
    if (missing[h] == 0L) next
    host <- S$config$machines[[h]]$host
    id <- names(S$sessions)[vapply(S$sessions, function(s) s$h == h, NA)][1]
    if (h %in% failed_h) {
      lines <- c(lines, sprintf("  %s: %s", host, session_reason(S, id)))
    } else {
      err <- read_text(paste0(S$sessions[[id]]$file, ".err"))
      lines <- c(lines, sprintf("  %s: %d of %d workers connected when the launch stopped%s",
                                host, n[h] - missing[h], n[h],
                                if (nzchar(err)) paste0("; ssh says: ", err) else ""))
    }
  }
  hosts <- vapply(if (length(failed_h)) failed_h else which(missing > 0L),
                  function(h) S$config$machines[[h]]$host, "")
  for (node in nodes) try(close(node$con), silent = TRUE)
  shutdown(S, grace = 0)
  msg <- sprintf("sshcluster: %s (%d of %d workers connected, all stopped):\n%s",
                 what, length(nodes), sum(n), paste(lines, collapse = "\n"))
  stop(structure(class = c("sshcluster_error", "error", "condition"),
                 list(message = msg, call = NULL, hosts = unname(hosts))))
}

# ---------------------------------------------------------------------------
# The running cluster: parallel's generics for our nodes

# A node holds only values that do not change (its connection, host, slot, pid,
# session and launch ids): code that hashes or copies a cluster object, as future
# does to tell clusters apart, sees the same cluster for as long as it runs. The
# state of a launch lives in the registry of launches (common.R), by id.
registry <- launches()

state_of <- function(node) {
  S <- registry[[.subset2(node, "launch")]]
  if (is.null(S))
    stop(sprintf(paste(
      "sshcluster: the cluster of worker %d on %s was stopped; source() the file again",
      "for a new one, then register the new parallelCluster again where you registered",
      "this one (doParallel::registerDoParallel(), future::plan())"), node$slot,
      node$host), call. = FALSE)
  S
}

# Waits until one of the nodes has something to read; every second, checks
# that their hosts, and the hosts of every worker with a call outstanding, are
# still there (a call that sent work to a lost worker can never complete,
# whichever worker it waits for first). Returns the index of a readable node.
wait_readable <- function(nodes, cons = lapply(nodes, .subset2, "con")) {
  repeat {
    ready <- socketSelect(cons, timeout = 1)
    if (any(ready)) return(which.max(ready))
    S <- state_of(nodes[[1]])
    relay(S)
    busy <- if (in_parallel_call())
      Filter(function(n) !is.null(n) && S$calls[[n$rank]] > 0L, unclass(S$cluster))
    # (plain lists: c() of a cluster object would be parallelly's c.cluster(), which
    # warns about the nodes the two have in common, every second of the wait)
    check_hosts(c(unclass(nodes), busy))
  }
}

# Whether this wait is part of one of parallel's own calls over the cluster (all of
# parLapply, clusterEvalQ, clusterExport, parLapplyLB, ... go through these): then
# the call needs every worker it sent work to, and a lost one dooms it. (Others,
# future for one, wait for one worker at a time, unrelated to the rest.)
in_parallel_call <- function() {
  heads <- vapply(sys.calls(), function(call)
    if (is.name(call[[1]])) as.character(call[[1]]) else "", "")
  any(heads %in% c("staticClusterApply", "dynamicClusterApply", "clusterCall"))
}

# Signals an error for the first node whose host's ssh session has ended, or
# whose worker its host has reported gone.
check_hosts <- function(nodes) {
  for (node in nodes) {
    S <- state_of(node)
    if (session_ended(S, node$session)) host_lost(node)
    status <- gone(S, node)
    if (!is.na(status))
      worker_lost(node, simpleError(sprintf("its host says the process ended (status %s)",
                                            status)))
  }
}

# The exit status a host reported for a node's worker ("gone SLOT STATUS" on its
# session's stdout), or NA.
gone <- function(S, node) {
  read_reports(S, node$session)
  status <- S$gone[[paste(node$session, node$slot)]]
  if (is.null(status)) NA_character_ else status
}

# Reads the whole lines session id's stdout got since the last look: "gone SLOT
# STATUS" reports are remembered; with worker_output: console, what the workers
# printed is printed here after the host's name (the host's "ready" aside).
read_reports <- function(S, id) {
  f <- paste0(S$sessions[[id]]$file, ".out")
  size <- file.size(f)
  seen <- S$report_sizes[[id]]
  if (is.null(seen)) seen <- 0
  if (is.na(size) || size <= seen) return(invisible())
  con <- file(f, "rb")
  on.exit(close(con))
  seek(con, seen)
  bytes <- readBin(con, "raw", size - seen)
  ends <- which(bytes == as.raw(10L))
  if (!length(ends)) return(invisible())  # (a line still being written)
  S$report_sizes[[id]] <- seen + ends[length(ends)]
  bytes <- bytes[seq_len(ends[length(ends)] - 1L)]
  lines <- strsplit(rawToChar(bytes[bytes != as.raw(0L)]), "\n", fixed = TRUE)[[1]]
  host <- S$config$machines[[S$sessions[[id]]$h]]$host
  for (line in lines) {
    words <- strsplit(line, " ", fixed = TRUE)[[1]]
    if (length(words) == 3L && words[1] == "gone") {
      S$gone[[paste(id, words[2])]] <- words[3]
    } else if (S$console && !identical(line, "ready")) {
      cat("[", host, "] ", line, "\n", sep = "")
    }
  }
  invisible()
}

# With worker_output: console, prints what every session's workers printed so far.
relay <- function(S) if (S$console) for (id in names(S$sessions)) read_reports(S, id)

host_lost <- function(node) {
  S <- state_of(node)
  S$ended[[node$session]] <- TRUE  # (remembered: a later send fails at once)
  same <- Filter(function(n) identical(n$session, node$session), S$cluster)
  fail_node(node, sprintf(
    "sshcluster: lost %s: %s. Its %d worker%s stopped; parallelCluster <- sshcluster_repair() goes on without %s.",
    node$host, sub("[.]+$", "", session_reason(S, node$session)), length(same),
    if (length(same) == 1L) " is" else "s are", if (length(same) == 1L) "it" else "them"))
}

# A worker's connection failed: say which worker, on which host, and why.
worker_lost <- function(node, e) {
  S <- state_of(node)
  # Behind a tunnel, the end of the ssh session closes the worker's connection:
  # give ssh a moment to say why, unless the host has already said the worker
  # itself ended.
  for (i in 1:20) {
    if (session_ended(S, node$session)) host_lost(node)
    if (!is.na(gone(S, node))) break
    Sys.sleep(0.1)
  }
  fail_node(node, sprintf(
    "sshcluster: worker %d on %s (pid %d) stopped: %s. parallelCluster <- sshcluster_repair() replaces it.",
    node$slot, node$host, node$pid, conditionMessage(e)))
}

fail_node <- function(node, message) {
  S <- state_of(node)
  S$lost[[as.character(node$rank)]] <- message
  stop(structure(class = c("sshcluster_error", "error", "condition"),
                 list(message = message, call = NULL, hosts = node$host, rank = node$rank)))
}

# Whether a node's connection is still the one it was: after parallel::stopCluster()
# R gives its number to the next connection opened, a file of the user's, say.
con_ok <- function(con) {
  i <- unclass(con)[1L]
  any(getAllConnections() == i) && identical(getConnection(i), con)
}

# A cluster object whose worker's connection is closed: one from before a repair
# (which replaced that worker), or one that parallel::stopCluster() stopped.
stale <- function(node) {
  S <- registry[[.subset2(node, "launch")]]
  now <- if (!is.null(S)) Filter(function(n) identical(n$rank, node$rank), unclass(S$cluster))
  replaced <- !is.null(S) && !is.null(S$cluster) &&
    !(length(now) && identical(now[[1]]$con, node$con))
  stop(structure(class = c("sshcluster_error", "error", "condition"), list(
    message = sprintf(paste0(
      "sshcluster: the connection to worker %d on %s was closed (%s); ", if (replaced)
        "use the cluster sshcluster_repair() returned (parallelCluster) and register it again where you registered this one: " else
        "source() the file again for a new cluster, then register it again where you registered this one: ",
      "doParallel::registerDoParallel(parallelCluster), future::plan(future::cluster, workers = parallelCluster)"),
      node$slot, node$host, if (replaced) "this cluster object is from before sshcluster_repair(), which replaced it"
      else "parallel::stopCluster()?"),
    call = NULL, hosts = node$host)))
}

# Reads one message; a worker's answer to a call ends that call's wait. (These
# methods run for every task: they keep to a few cheap steps. A failed read or
# write is turned into an error that names the worker by a calling handler, which
# costs a third of what tryCatch() does: worker_lost() signals the new error from
# within the handler, so the original one never reaches the user.)
read_value <- function(node) {
  value <- withCallingHandlers(unserialize(.subset2(node, "con")),
                               error = function(e) worker_lost(node, e))
  type <- .subset2(value, "type")
  if (length(type) == 1L && type == "VALUE") {
    S <- state_of(node)
    r <- .subset2(node, "rank")
    if (S$calls[r] > 0L) S$calls[r] <- 0L
    if (S$console) read_reports(S, .subset2(node, "session"))
    # A task that failed in parallel's own worker loop: its error text (which
    # parallel's calls put in their error) names the worker; the class is kept.
    if (identical(.subset2(value, "success"), FALSE) &&
        inherits(.subset2(value, "value"), "try-error"))
      value$value[1L] <- sub("(\n?)$", sprintf(" [worker %d on %s]\\1", node$slot,
                                                node$host), value$value[1L])
  }
  value
}

# A short call's answer comes back in well under a millisecond: looking for it a
# few hundred times without sleeping answers sooner than going to sleep in the
# kernel and being woken (the sleep costs more than the look). Longer waits sleep.
SPIN <- 300L

# One worker's answer: looked for SPIN times, then waited for (wait_readable).
recvData.sshcluster_node <- function(node) {
  cons <- list(.subset2(node, "con"))
  for (k in seq_len(SPIN)) if (socketSelect(cons, timeout = 0)) return(read_value(node))
  wait_readable(list(node), cons)
  read_value(node)
}

# A wait for whichever worker answers first (parLapplyLB, foreach, ...) does not spin:
# with many workers answering in turn an answer is usually there already, and a spin
# would take a core that the workers on this machine, or its ssh processes, could use.
recvOneData.sshcluster <- function(cl) {
  # (.subset2: no method lookup, once per task)
  i <- wait_readable(cl, lapply(cl, .subset2, "con"))
  list(node = i, value = read_value(cl[[i]]))
}

# (A lost host is noticed by the wait for the answer: checking here too would cost
# every task a look at the disk.)
sendData.sshcluster_node <- function(node, data) {
  con <- .subset2(node, "con")
  if (!con_ok(con)) stale(node)
  type <- .subset2(data, "type")
  if (length(type) == 1L && type == "EXEC") {
    S <- state_of(node)
    if (!is.null(S$ended[[.subset2(node, "session")]])) host_lost(node)
    r <- .subset2(node, "rank")
    if (S$calls[r] > 0L) fail_node(node, sprintf(paste(
      "sshcluster: worker %d on %s has not answered an earlier call (an interrupted one?),",
      "so this call would get that call's results. parallelCluster <- sshcluster_repair()",
      "brings the cluster back in step."), node$slot, node$host))
    S$calls[r] <- 1L
  }
  # A worker that is gone usually still takes the bytes (they wait in the kernel):
  # the wait for its answer is what names it. A big message to a host that is gone
  # fails after STALL_SECONDS without progress, and then names it too.
  withCallingHandlers(serialize(data, con), error = function(e) worker_lost(node, e))
  invisible(NULL)
}

for (method in c("recvData.sshcluster_node", "recvOneData.sshcluster",
                 "sendData.sshcluster_node"))
  registerS3method(sub("[.].*", "", method), sub("^[^.]*[.]", "", method), get(method),
                   envir = parallel_ns)

# ---------------------------------------------------------------------------
# Stopping

# Tells every worker to stop, closes its connection, then ends the sessions.
stop_cluster <- function(S) {
  for (node in S$cluster) if (!is.null(node) && con_ok(node$con)) {
    # (not to a host that is gone, nor into a full buffer: that could block)
    if (!session_ended(S, node$session) &&
        isTRUE(socketSelect(list(node$con), write = TRUE, timeout = 0)))
      try(internals$postNode(node, "DONE"), silent = TRUE)
    try(close(node$con), silent = TRUE)
  }
  S$cluster <- NULL
  shutdown(S, grace = 2)
  if (belongs(get0("parallelCluster", envir = globalenv(), inherits = FALSE), S))
    rm("parallelCluster", envir = globalenv())
}

# Ends the supervisor (and with it every session; each host then stops what is
# left of its workers), the listening socket and the launch directory.
# 'grace' seconds are left for the sessions to end by themselves.
shutdown <- function(S, grace = 1) {
  if (!is.null(S$supervisor)) {
    try(supervise(S, paste("stop", grace)), silent = TRUE)
    try(close(S$supervisor), silent = TRUE)  # waits for the supervisor to end
    S$supervisor <- NULL
  }
  if (!is.null(S$listener)) {
    try(close(S$listener), silent = TRUE)
    S$listener <- NULL
  }
  if (isTRUE(S$console) && !is.null(S$dir)) try(relay(S), silent = TRUE)
  if (!is.null(S$dir)) unlink(S$dir, recursive = TRUE)
  S$dir <- NULL
  if (!is.null(S$id) && exists(S$id, envir = registry, inherits = FALSE))
    rm(list = S$id, envir = registry)
  invisible()
}

# ---------------------------------------------------------------------------
# Repairing: going on without lost hosts, and in step after an interrupted call

DRAIN_SECONDS <- 5  # how long a worker may take to answer the repair's no-op call

# Looks at every worker: drops the dead ones, discards results an interrupted
# call left behind, restarts workers still busy with such a call, relaunches
# workers on hosts that answer ssh again; reports what it did per host and
# returns the cluster (also as parallelCluster). A healthy cluster is left as
# it is. It never runs a task of yours again: that is for you to decide.
repair <- function(S) {
  if (is.null(S$cluster))
    stop("sshcluster: this cluster was stopped; source() the file again", call. = FALSE)
  follow <- registered(S)  # registrations of the cluster object as it was before
  nodes <- Filter(Negate(is.null), unclass(S$cluster))
  ranks <- vapply(nodes, `[[`, 1L, "rank")
  names(nodes) <- ranks
  state <- setNames(rep("ok", length(nodes)), ranks)
  why <- setNames(rep("", length(nodes)), ranks)
  stale <- setNames(integer(length(nodes)), ranks)
  drop <- function(r, reason) {
    state[[r]] <<- "dead"
    why[[r]] <<- reason
  }
  # 1. dead sessions, dead connections, results nobody read
  for (r in names(nodes)) {
    node <- nodes[[r]]
    if (session_ended(S, node$session)) {
      drop(r, session_reason(S, node$session))
      next
    }
    while (state[[r]] == "ok" && socketSelect(list(node$con), timeout = 0)) {
      v <- tryCatch(unserialize(node$con), error = identity)
      if (inherits(v, "error")) drop(r, conditionMessage(v)) else stale[[r]] <- stale[[r]] + 1L
    }
  }
  # 2. a no-op call to every live worker: it answers at once unless it is still
  # busy with a call that was interrupted
  marker <- random_hex(8L)
  S$calls[] <- 0L  # the marker, not the count, tells who is in step now
  for (r in names(nodes)[state == "ok"]) {
    sent <- tryCatch({
      internals$sendCall(nodes[[r]], identity, list(marker))
      TRUE
    }, error = function(e) conditionMessage(e))
    if (!isTRUE(sent)) drop(r, sent)
  }
  waiting <- names(nodes)[state == "ok"]
  deadline <- Sys.time() + DRAIN_SECONDS
  while (length(waiting) && Sys.time() < deadline) {
    ready <- socketSelect(lapply(nodes[waiting], `[[`, "con"), timeout = 0.2)
    for (r in waiting[ready]) {
      v <- tryCatch(unserialize(nodes[[r]]$con), error = identity)
      if (inherits(v, "error")) {
        drop(r, conditionMessage(v))
      } else if (identical(v$value, marker)) {
        state[[r]] <- "synced"
      } else {
        stale[[r]] <- stale[[r]] + 1L
      }
    }
    waiting <- names(nodes)[state == "ok"]
  }
  state[waiting] <- "busy"
  if (all(state == "synced") && length(nodes) == sum(vapply(S$config$machines,
                                                            function(m) m$ncore, 1L))) {
    S$calls[] <- 0L
    message(sprintf("sshcluster_repair: all %d workers are healthy%s; nothing else to do",
                    length(nodes), if (sum(stale)) sprintf(" (%d results of an unfinished call discarded)", sum(stale)) else ""))
    return(invisible(S$cluster))
  }
  # 3. sessions with a busy worker end whole (their workers cannot be stopped
  # one by one); their workers start again with the dead ones
  restart_sessions <- unique(vapply(nodes[state == "busy"], `[[`, "", "session"))
  for (id in restart_sessions) supervise(S, paste("kill", id))
  again <- names(nodes)[state == "dead" | vapply(nodes, function(n) n$session %in%
                                                    restart_sessions, NA)]
  for (r in again) try(close(nodes[[r]]$con), silent = TRUE)
  kept <- nodes[setdiff(names(nodes), again)]
  # 4. relaunch every slot that has no worker, host by host
  machines <- S$config$machines
  missing <- lapply(seq_along(machines), function(h) {
    have <- vapply(Filter(function(n) n$h == h, kept), `[[`, 1L, "slot")
    setdiff(seq_len(machines[[h]]$ncore), have)
  })
  S$lost <- list()
  new <- launch(S, missing, deadline = Sys.time() + S$config$setup_timeout, fail_fast = FALSE)
  all <- c(unname(kept), new)
  all <- all[order(vapply(all, `[[`, 1L, "rank"))]
  S$cluster <- structure(all, class = c("sshcluster", "SOCKcluster", "cluster"))
  # 5. what happened, per host
  lines <- character()
  for (h in seq_along(machines)) {
    mine <- function(list) Filter(function(n) n$h == h, list)
    before <- nodes[vapply(nodes, function(n) n$h == h, NA)]
    dead <- sum(state[names(before)] == "dead")
    busy <- sum(state[names(before)] == "busy")
    back <- length(mine(new))
    lines <- c(lines, sprintf("  %s: %s", machines[[h]]$host, paste(c(
      sprintf("%d of %d workers running", length(mine(all)), machines[[h]]$ncore),
      if (dead) sprintf("%d lost (%s)", dead, paste(unique(why[names(before)][state[names(before)] == "dead"]), collapse = "; ")),
      if (busy) sprintf("%d still busy with an interrupted call, so its session was restarted", busy),
      if (sum(stale[names(before)])) sprintf("%d results of an unfinished call discarded", sum(stale[names(before)])),
      if (back) sprintf("%d started again", back),
      if (length(missing[[h]]) > back) sprintf("%d could not be started (%s)", length(missing[[h]]) - back,
                                          last_reason(S, h))
    ), collapse = "; ")))
  }
  message(sprintf("sshcluster_repair: %d of %d workers running:\n%s", length(all),
                  sum(vapply(machines, function(m) m$ncore, 1L)), paste(lines, collapse = "\n")))
  S$calls[] <- 0L
  # (the global name only if it held this cluster: it may be another file's now)
  current <- get0("parallelCluster", envir = globalenv(), inherits = FALSE)
  if (is.null(current) || belongs(current, S))
    assign("parallelCluster", S$cluster, envir = globalenv())
  register(follow, S$cluster)
  invisible(S$cluster)
}

# Why machine h's newest session ended.
last_reason <- function(S, h) {
  ids <- names(S$sessions)[vapply(S$sessions, function(s) s$h == h, NA)]
  id <- ids[length(ids)]
  if (session_ended(S, id)) session_reason(S, id) else "its workers did not connect in time"
}
