# ---------------------------------------------------------------------------
# sshcluster's fast launch and its running cluster, on the primary: start.R,
# session.R, accept.R, node.R, stop.R, repair.R and show.R, pasted in that order.
#
# The generated cluster.R runs these files in an environment of their own (as
# local() would, in short statements: bootstrap.py), then calls start(config):
# only the names start() assigns (parallelCluster, sshcluster_stop,
# sshcluster_repair) reach the global environment.
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

# ---------------------------------------------------------------------------
# Starting

# The state of one launch, with every field it will have: the cluster (its nodes
# are filled in as workers are admitted), the sessions and what they reported, and
# the supervisor, directory, listener and port (NULL until opened).
new_launch <- function(config, key) {
  S <- new.env()
  S$key <- key
  S$config <- config
  S$console <- identical(config$worker_output, "console")
  # Under 'sshcluster run' the workers' lines go to a log per host (in this
  # directory) instead of this R's stdout, where the script's own output goes.
  S$log_dir <- if (is.null(config$worker_logs)) "" else path.expand(config$worker_logs)
  S$known_hosts <- paste(known_hosts_words(config$known_hosts), ssh_overrides())
  S$limit <- connection_limit()
  S$id <- random_hex(8L)
  # lease: true: who holds the hosts, as 'sshcluster jobs' shows it (job, who, since,
  # script; one line of tab-separated fields).
  S$lease <- paste(paste0("R-", S$id),
                   paste0(Sys.info()[["user"]], "@", Sys.info()[["nodename"]]),
                   format(Sys.time(), "%Y-%m-%dT%H:%M:%S+00:00", tz = "UTC"),
                   gsub("[[:space:]]+", " ", basename(S$key)), sep = "\t")
  S$stop <- function() stop_cluster(S)
  S$refused <- 0L
  S$report_sizes <- list()
  S$gone <- list()
  S$ended <- list()
  S$next_id <- 0L
  S$sessions <- list()
  S$lost <- list()
  S$on_new_workers <- list()  # f(cl) for the workers a repair starts
  S$dir <- NULL
  S$supervisor <- NULL
  S$listener <- NULL
  S$port <- NULL
  S$about <- list()  # each host's R version and platform, by machine index (show.R)
  n <- vapply(config$machines, function(m) as.integer(m$ncore), 1L)
  S$first <- cumsum(c(0L, n))[seq_along(n)]  # spec position before each machine
  S$cluster <- structure(vector("list", sum(n)), class = c("sshcluster", "SOCKcluster",
                                                           "cluster"))
  S$calls <- integer(sum(n))  # per worker: calls sent and not yet answered
  # behind relays: answers held for the worker they are for (node.R), the message
  # last sent (a broadcast's), and the nodes parallel::stopCluster() closed so far
  S$relayed <- FALSE
  S$inbox <- vector("list", sum(n))
  S$held <- 0L       # answers in the inbox
  S$echoes <- list() # echoes asked of each session's relay and not read yet
  S$broken <- list() # why a session's relay connection was given up on
  S$failing <- list() # why a relay connection failed, while ssh is given time to say more
  S$pids <- rep(NA_integer_, sum(n))  # behind relays: each worker's pid, as its relay says
  S$sent <- NULL
  S$closing <- character()
  S$repairing <- FALSE # a repair stopped workers and has not started them again yet
  S$lanes <- FALSE   # each relayed worker also has a connection of its own (start())
  S$bulk <- list()   # with lanes: each session's relay connection, for big messages
  S
}

start <- function(config) {
  key <- sourced_file()
  again <- stop_previous(key)
  S <- new_launch(config, key)
  n <- vapply(config$machines, function(m) as.integer(m$ncore), 1L)
  relays <- sum(vapply(n, function(k) sum(vapply(relay_parts(config, seq_len(k)),
    function(p) relayed(config, length(p)), NA)), 1L))
  # Lanes where R's connections allow them (one per worker besides the relays'), and
  # they take at most half of the connections this R has free: a worker's own calls
  # then go straight to it, and only big messages through its host's relay. Else
  # every message goes through the relay, one connection per host.
  # (options(sshcluster.lanes = FALSE) keeps every message on the relays.)
  S$lanes <- relays > 0L && !identical(getOption("sshcluster.lanes"), FALSE) &&
    lanes_fit(S, length(S$cluster) + relays)
  check_connections(S, length(S$cluster), if (S$lanes) length(S$cluster) + relays else
    sum(vapply(n, function(k) sum(vapply(relay_parts(config, seq_len(k)),
      function(p) if (relayed(config, length(p))) 1L else length(p), 1L)), 1L)))
  assign(S$id, S, envir = registry)
  ok <- FALSE
  on.exit(if (!ok) shutdown(S, grace = 0), add = TRUE)
  open_supervisor(S)
  # R's exit closes the supervisor's pipe and waits for it to end; a process that R
  # forked (mcparallel, a fork cluster) may hold that pipe open, so the end of the
  # pipe would never come: the supervisor is told to stop instead.
  reg.finalizer(S, function(S) shutdown(S, grace = 0), onexit = TRUE)
  wanted <- lapply(seq_along(n), function(h) seq_len(n[h]))
  got <- launch(S, wanted, deadline = Sys.time() + config$setup_timeout, fail_fast = TRUE)
  for (node in got) S$cluster[[node$rank]] <- node
  # `sshcluster sync`'s library first on every worker, before anything is loaded there
  # (publish() registers future, which loads it and its dependencies: R/library.R)
  if (!is.null(config$library)) use_library(S$cluster, config$library)
  # a worker or the primary without future or doParallel: named now, and the launch
  # fails whole (publish() registers after ok, below)
  check_register(union(config$register$what, again), S$cluster,
                 config$register$needs)
  S$about <- about_hosts(S)  # (for print(): one call to one worker per host)
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
  register(union(S$config$register$what, again), S$cluster)
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

# Stops before anything is started when the workers would not fit: they take one R
# connection each, or one per host behind the hosts' relays ('links').
lanes_fit <- function(S, links) {
  used <- length(getAllConnections())
  others <- S$config$connections[["launch"]] + S$config$connections[["user"]]
  links <= (S$limit - used - others) / 2 && used + links + others <= LANES_MOST
}
# (R waits on its sockets with select(), which stops at file descriptor 1024: in an R
# allowed thousands of connections, lanes only while all of its connections stay under
# this many, with room for descriptors that are not R's)
LANES_MOST <- 960L

check_connections <- function(S, workers, links = workers) {
  used <- length(getAllConnections())
  free <- S$limit - used
  needed <- links + S$config$connections[["launch"]]  # the listening socket and
  reserved <- S$config$connections[["user"]]           # the supervisor's pipe
  if (needed + reserved <= free) return(invisible())
  most <- max(0L, free - S$config$connections[["launch"]] - reserved)
  stop(structure(class = c("sshcluster_error", "error", "condition"), list(
    message = sprintf(paste0(
      "sshcluster: %d workers need %d R connections (%s, plus the listening socket ",
      "and the ssh supervisor), and %d more should stay free for your own files, but this ",
      "R session has %d free (%d in all, %d in use). Nothing was started.\n",
      "  Use at most %d %s from this primary, or run R >= 4.4 started with ",
      "--max-connections=%d."),
      workers, needed, if (links == workers) "one each" else
        sprintf("%d: one per host behind its relay, one per worker otherwise", links),
      reserved, free, S$limit, used, most,
      if (links == workers) "workers" else "connections' worth of hosts",
      used + needed + reserved),
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
  offset <- (Sys.getpid() * 7919 + as.integer(Sys.time())) %% size
  for (k in seq_len(size) - 1L) {
    port <- range[1] + as.integer((offset + k) %% size)
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
